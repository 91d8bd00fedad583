"""Content digests of many files, remembered across runs so that a digest over a growing history
reads only the files that changed since it was last taken.

A file's sha256 is reused while its size, modification time (ns) and inode are those recorded
with it. Every writer of the project publishes by renaming a new file over the old one
(tasks/io/atomic.py), which gives a new inode and a new mtime, so a rewritten file is always
read again. The record is a cache: one that cannot be read is ignored (and rewritten), never an
error, and deleting it only costs one full pass.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tasks.io.atomic import write_json
from tasks.io.quarantine import file_sha256

log = logging.getLogger(__name__)


class FileDigests:
    """sha256 of files, remembered in `record` (JSON: name -> [size, mtime_ns, inode, sha256])."""

    def __init__(self, record: Path) -> None:
        self.record = Path(record)
        self.hashed = 0  # files actually read by this object (the rest came from the record)
        self._entries: dict[str, list] = {}
        self._changed = False
        try:
            loaded = json.loads(self.record.read_text())
            if isinstance(loaded, dict):
                self._entries = {k: v for k, v in loaded.items() if isinstance(v, list) and len(v) == 4}
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("file digest record %s unreadable (%s): every file is read again", self.record, exc)

    def _name(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.record.parent))
        except ValueError:
            return str(path)

    def sha256(self, path: Path) -> str | None:
        """The file's sha256 (hex); None when it does not exist."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        name = self._name(path)
        entry = self._entries.get(name)
        if entry is not None and entry[:3] == stamp:
            return str(entry[3])
        digest = file_sha256(path)
        self.hashed += 1
        self._entries[name] = [*stamp, digest]
        self._changed = True
        return digest

    def save(self) -> None:
        """Publish the record when it learnt something (atomically; a failure only loses the cache)."""
        if not self._changed:
            return
        try:
            write_json(self.record, self._entries)
            self._changed = False
        except OSError as exc:
            log.warning("file digest record %s not saved (%s): the next run reads the files again", self.record, exc)
