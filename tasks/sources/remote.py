"""What every source mode offers the pull: list the granules of a product in a window, fetch one.

`DirectoryRemote` serves the demo world and local mode; `tasks.sources.earthdata` (OCO-2/OCO-3
via earthaccess) and `tasks.sources.cds` (GOSAT and ERA5 via cdsapi) serve the real archives.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Protocol

from tasks.sources.products import PRODUCTS


@dataclass(frozen=True)
class RemoteGranule:
    product: str
    remote_id: str  # stable identity in the archive (manifest key)
    name: str  # the real file name it lands under in the raw cache
    day: date | None
    size: int | None = None
    handle: Any = field(default=None, compare=False, hash=False)  # whatever fetch() needs


class Remote(Protocol):
    def list(self, product: str, start: date | None, end: date | None) -> list[RemoteGranule]: ...

    def fetch(self, granule: RemoteGranule, dest: Path) -> None:
        """Write the whole granule to `dest` (a temp path that does not exist yet)."""


class SourceError(RuntimeError):
    pass


class GranuleUnavailable(Exception):
    """The archive has no such granule yet (not an error): ask again after a while."""


class DirectoryRemote:
    """Granules already on disk below `root`, recognised by their real file names."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def list(self, product: str, start: date | None, end: date | None) -> list[RemoteGranule]:
        if not self.root.is_dir():
            raise SourceError(f"source directory {self.root} does not exist")
        spec = PRODUCTS[product]
        out = []
        for path in sorted(p for p in self.root.rglob("*") if p.is_file() and spec.matches(p.name)):
            day = spec.day(path.name)
            if day is not None and ((start and day < start) or (end and day > end)):
                continue
            # Size and modification time are part of the identity: a file replaced in the
            # directory (a late reprocessing, ERA5 final over ERA5T) is pulled again.
            stat = path.stat()
            remote_id = f"{path.relative_to(self.root).as_posix()}@{stat.st_size}:{stat.st_mtime_ns}"
            out.append(RemoteGranule(product, remote_id, path.name, day, stat.st_size, handle=path))
        return out

    def fetch(self, granule: RemoteGranule, dest: Path) -> None:
        try:
            os.link(granule.handle, dest)  # same filesystem: instant and no extra disk
        except OSError:
            shutil.copyfile(granule.handle, dest)
