"""Where input granules come from: the demo world, a local directory, or the real archives.

`pull(settings, products, window)` is the one entry point: it finds what is new, fetches it
into the raw cache (`<data>/raw/<product>/`) through a sibling temp file, checks that it
reads, records it in the manifest, and quarantines what does not read.
"""

from tasks.sources.manifest import Manifest
from tasks.sources.products import PRODUCTS, Product
from tasks.sources.pull import PullReport, pull, raw_granules

__all__ = ["Manifest", "PRODUCTS", "Product", "PullReport", "pull", "raw_granules"]
