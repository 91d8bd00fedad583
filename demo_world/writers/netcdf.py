"""What the NetCDF-4 writers share."""

from __future__ import annotations

from typing import Literal, TypedDict


class Compression(TypedDict):
    """createVariable's compression keywords, typed as netCDF4's stubs take them (a plain dict
    would read as dict[str, int] and match no overload)."""

    zlib: bool
    complevel: Literal[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    shuffle: bool
