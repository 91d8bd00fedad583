"""Write-then-rename: a reader sees the old file or the new one, never a partial file.

The file is built under a hidden sibling name (same directory, so `os.replace` is an atomic
rename on one filesystem) and renamed onto its final name only when complete. The temp name
starts with '.' and ends with '.tmp' so listings (archive days, raw granules) skip it.

Unlike a `mkstemp` temp file (mode 0600), the file is created by whoever writes it (GDAL,
`open`) with the usual umask-derived mode, so analysts other than the pipeline user can read
the archive.
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def _temp_sibling(path: Path) -> Path:
    # pid + random part: two writers of the same day never share a temp file.
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform lets a directory be opened.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_leftovers(temp: Path) -> None:
    # GDAL may have made its own side files named after ours (e.g. "<temp>.ovr.tmp").
    for leftover in temp.parent.glob(f"{temp.name}*"):
        leftover.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temp path to write to; on success it replaces `path`, on failure it vanishes.

    The temp file does not exist yet when yielded: the writer creates it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_sibling(path)
    try:
        yield temp
        if not temp.is_file():
            raise FileNotFoundError(f"nothing was written to {temp} for {path}")
        # Data on disk before the rename, or a crash could publish an empty file.
        _fsync_file(temp)
        os.replace(temp, path)
    except BaseException:
        _remove_leftovers(temp)
        raise
    _fsync_dir(path.parent)


def publish_text(path: Path | str, text: str) -> Path:
    path = Path(path)
    with atomic_path(path) as temp:
        with open(temp, "x", encoding="utf-8") as fh:
            fh.write(text)
    return path


def write_json(path: Path | str, obj: Any) -> Path:
    return publish_text(path, json.dumps(obj, indent=2, default=str))


def save_npy(path: Path | str, array: np.ndarray) -> Path:
    path = Path(path)
    with atomic_path(path) as temp:
        with open(temp, "xb") as fh:
            np.save(fh, array)
    return path
