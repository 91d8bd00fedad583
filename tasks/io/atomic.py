"""Write, verify, then rename: a reader sees the old file or the new one, never a partial file.

The file is built under a hidden sibling name (same directory, so `os.replace` is an atomic
rename on one filesystem) and renamed onto its final name only when complete: written, flushed
and fsynced, then read back and checked (the `verify` hook). A full disk does not always make
the writer fail: GDAL, for one, can return normally from a COG whose tiles never reached the
disk. Reading the temp file back is what catches that, before anything is published. The temp
name starts with '.' and ends with '.tmp' so listings (archive days, raw granules) skip it.

Any I/O failure (ENOSPC, EFBIG, EIO) or failed verification raises `PublishError`, an OSError
whose message names the final path and, for a storage error, its cause first ("disk full
(ENOSPC) in <folder> (N bytes free on its filesystem)"); the temp file is removed and the
previous version of the file, if any, stays in place untouched. Every `atomic_path` has a temp
name of its own: a write that is tried again goes through a new `atomic_path`, never through the
temp file of the attempt that failed.

Unlike a `mkstemp` temp file (mode 0600), the file is created by whoever writes it (GDAL,
`open`) with the usual umask-derived mode, so analysts other than the pipeline user can read
the archive.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

# Called on the complete, fsynced temp file before the rename; raises when it is not sound.
Verifier = Callable[[Path], None]

# Errors of the storage itself. A writer's other OSErrors (a download's ConnectionError, say)
# keep their type, since callers decide on retries by it.
STORAGE_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EFBIG", "EIO", "EDQUOT", "EROFS") if hasattr(errno, name))


class PublishError(OSError):
    """A file could not be published complete; `path` is the final path, left as it was."""

    def __init__(self, path: Path | str, problem: str, errno_: int | None = None) -> None:
        super().__init__(f"{path}: not published: {problem}")
        self.path = Path(path)
        self.problem = problem
        if errno_ is not None:
            self.errno = errno_

    def __reduce__(self) -> tuple[type[PublishError], tuple[Path, str, int | None]]:
        # Flow runners (Dask, Prefect) pickle exceptions; OSError's own reduce would drop `problem`.
        return (type(self), (self.path, self.problem, self.errno))


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


def describe_error(exc: BaseException) -> str:
    # GDAL's real reason ("TIFFFillTile: got 1272 bytes, expected 10602") sits in the chain of
    # causes under a generic "Read failed. See previous exception".
    parts: list[str] = []
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen and len(parts) < 5:
        seen.add(id(cause))
        text = f"{type(cause).__name__}: {cause}"
        if text not in parts:
            parts.append(text)
        cause = cause.__cause__ or cause.__context__
    return "; caused by ".join(parts)


def _free_space_note(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f" ({free:,} bytes free on its filesystem)"


# What a storage errno means, named first: "[Errno 28] No space left on device" at the end of a
# chain of causes is easily missed, and a full disk is the one cause an operator must act on.
_STORAGE_CAUSES = {"ENOSPC": "disk full", "EDQUOT": "disk quota exceeded", "EFBIG": "file too large",
                   "EIO": "I/O error", "EROFS": "read-only filesystem"}


def _storage_problem(exc: OSError, folder: Path) -> str:
    """'disk full (ENOSPC) in <folder> (N bytes free on its filesystem): <the error>'."""
    name = errno.errorcode.get(exc.errno or 0, "")
    cause = _STORAGE_CAUSES.get(name)
    if cause is None:  # no errno (numpy's short write): the error and the free space
        return f"{describe_error(exc)}{_free_space_note(folder)}"
    return f"{cause} ({name}) in {folder}{_free_space_note(folder)}: {describe_error(exc)}"


@contextmanager
def atomic_path(path: Path | str, verify: Verifier | None = None,
                error: type[PublishError] = PublishError, local_writer: bool = False) -> Iterator[Path]:
    """Yield a temp path to write to; on success it replaces `path`, on failure it vanishes.

    The temp file does not exist yet when yielded: the writer creates it. Once the writer is
    done the file is fsynced and `verify(temp)` (if given) reads it back; only then is it
    renamed. A storage error of the writer (ENOSPC, EFBIG, EIO...), any OSError of the fsync
    or the rename, and any exception from `verify` become `error` (a PublishError) naming
    `path`; other exceptions of the writer pass through unchanged. `local_writer`: the writer
    only writes the local file, so every OSError it raises is the storage's (numpy's "1000
    requested and 234 written" has no errno).
    """
    path = Path(path)
    temp = _temp_sibling(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            yield temp
        except OSError as exc:
            if local_writer or exc.errno in STORAGE_ERRNOS:
                raise error(path, _storage_problem(exc, path.parent), exc.errno) from exc
            raise
        if not temp.is_file():
            raise error(path, f"nothing was written to the temp file {temp.name}")
        # Data on disk before the rename, or a crash could publish an empty file.
        try:
            _fsync_file(temp)
        except OSError as exc:
            raise error(path, f"fsync: {describe_error(exc)}", exc.errno) from exc
        if verify is not None:
            try:
                verify(temp)
            except Exception as exc:  # noqa: BLE001 - whatever the check found, nothing is published
                raise error(path, f"the written file does not read back sound{_free_space_note(path.parent)}: "
                            f"{describe_error(exc)}", getattr(exc, "errno", None)) from exc
        try:
            os.replace(temp, path)
        except OSError as exc:
            raise error(path, f"rename: {describe_error(exc)}", exc.errno) from exc
    except BaseException:
        _remove_leftovers(temp)
        raise
    _fsync_dir(path.parent)


def _reads_back_as(expected: bytes) -> Verifier:
    def verify(temp: Path) -> None:
        written = temp.read_bytes()
        if written != expected:
            raise ValueError(f"{len(written)} bytes read back of {len(expected)} written"
                             + (", with different content" if len(written) == len(expected) else ""))
    return verify


def _parses_as_json(temp: Path) -> None:
    json.loads(temp.read_text(encoding="utf-8"))


def publish_text(path: Path | str, text: str, verify: Verifier | None = None,
                 error: type[PublishError] = PublishError) -> Path:
    """Publish `text` (UTF-8) at `path`; the file is read back and compared byte for byte, then
    `verify` (e.g. a parser) runs on it too."""
    path = Path(path)
    data = text.encode("utf-8")
    check = _reads_back_as(data)

    def verify_all(temp: Path) -> None:
        check(temp)
        if verify is not None:
            verify(temp)

    with atomic_path(path, verify=verify_all, error=error, local_writer=True) as temp:
        with open(temp, "xb") as fh:
            fh.write(data)
    return path


def publish_json_text(path: Path | str, text: str, error: type[PublishError] = PublishError) -> Path:
    """Publish already-serialised JSON; read back byte for byte and parsed before the rename."""
    return publish_text(path, text, verify=_parses_as_json, error=error)


def write_json(path: Path | str, obj: Any) -> Path:
    return publish_json_text(path, json.dumps(obj, indent=2, default=str))


def save_npy(path: Path | str, array: np.ndarray) -> Path:
    path = Path(path)
    array = np.asarray(array)

    def verify(temp: Path) -> None:
        # Memory-mapped: a large layer stack is compared without a second copy in memory.
        written = np.load(temp, mmap_mode="r", allow_pickle=False)
        if written.shape != array.shape or written.dtype != array.dtype:
            raise ValueError(f"reads back as {written.dtype} {written.shape}, written {array.dtype} {array.shape}")
        if not np.array_equal(written, array, equal_nan=array.dtype.kind in "fc"):
            raise ValueError("reads back with different values than written")

    with atomic_path(path, verify=verify, local_writer=True) as temp:
        with open(temp, "xb") as fh:
            np.save(fh, array)
    return path
