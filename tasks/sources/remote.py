"""What every source mode offers the pull: list the granules of a product in a window, fetch one.

`DirectoryRemote` serves the demo world and local mode; `tasks.sources.earthdata` (OCO-2/OCO-3
via earthaccess) and `tasks.sources.cds` (GOSAT and ERA5 via cdsapi) serve the real archives.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from tasks.sources.products import PRODUCTS

log = logging.getLogger(__name__)


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
        for path in sorted(p for p in self.root.rglob("*") if p.is_file() and spec.pattern.search(p.name)):
            # One odd name (an impossible or future date) must not cost the product's other granules.
            problem = spec.name_problem(path.name)
            if problem:
                log.warning("%s: skipped %s: %s", product, path, problem)
                continue
            day = spec.day(path.name)
            if day is not None and ((start and day < start) or (end and day > end)):
                continue
            # Size and modification time are part of the identity: a file replaced in the
            # directory (a late reprocessing, ERA5 final over ERA5T) is pulled again.
            try:
                stat = path.stat()
            except OSError as exc:  # removed or unreadable since it was listed
                log.warning("%s: skipped %s: %s", product, path, exc)
                continue
            remote_id = f"{path.relative_to(self.root).as_posix()}@{stat.st_size}:{stat.st_mtime_ns}"
            out.append(RemoteGranule(product, remote_id, path.name, day, stat.st_size, handle=path))
        return out

    def fetch(self, granule: RemoteGranule, dest: Path) -> None:
        # Never a hard link: damage done to the source afterwards (a file truncated or rewritten
        # in place) would reach the cache through the shared inode.
        copy_unshared(Path(granule.handle), Path(dest))


# Linux's FICLONE ioctl (_IOW(0x94, 9, int)): the copy shares blocks copy-on-write with the
# source (btrfs, XFS, bcachefs) yet stays intact when the source is later changed in place.
_FICLONE = 0x40049409


def copy_unshared(src: Path, dest: Path) -> None:
    """Copy `src` to the new file `dest` without sharing storage that a write to `src` changes.

    A reflink (copy-on-write clone) where the filesystem offers one, else the kernel's
    copy_file_range, else a plain copy. The copy's size is checked against the source's
    size at the start: a source that changes during the copy raises, it is not cached.
    """
    with open(src, "rb") as fsrc:
        expected = os.fstat(fsrc.fileno()).st_size
        with open(dest, "xb") as fdst:
            if not _reflink(fsrc.fileno(), fdst.fileno()):
                _copy_data(fsrc, fdst, expected)
            fdst.flush()
            os.fsync(fdst.fileno())
            copied = os.fstat(fdst.fileno()).st_size
    if copied != expected:
        raise SourceError(f"copying {src}: {copied} bytes copied of {expected} (the source changed meanwhile?)")


def _reflink(src_fd: int, dst_fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # not on Linux/Unix: no reflink
        return False
    try:
        fcntl.ioctl(dst_fd, _FICLONE, src_fd)
    except OSError:  # EOPNOTSUPP, EXDEV, EINVAL...: this filesystem cannot clone
        return False
    return True


def _copy_data(fsrc: BinaryIO, fdst: BinaryIO, size: int) -> None:
    copy_range = getattr(os, "copy_file_range", None)
    done = 0
    if copy_range is not None:
        try:
            while done < size:
                n = copy_range(fsrc.fileno(), fdst.fileno(), size - done)
                if n == 0:
                    break
                done += n
        except OSError:  # e.g. EXDEV on older kernels, or a filesystem without it: start over
            fsrc.seek(0)
            fdst.seek(0)
            fdst.truncate()
            done = 0
        else:
            # copy_file_range advanced the file offsets; read the rest (if the source grew) below.
            if done >= size:
                return
    fsrc.seek(done)
    fdst.seek(done)
    shutil.copyfileobj(fsrc, fdst, 1 << 20)
