"""Moving a bad input file aside so the rest of the day goes on and the file can be fetched again.

Quarantine is idempotent: a file whose bytes (sha256) are already in the quarantine under the
same name is not news; it is removed from where it was and no second copy or note is made. A bad
file that stays in the source is fetched and found bad again by every run, and the quarantine
would otherwise grow by one copy and one note per run.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)


class InputFileError(ValueError):
    """An input file is corrupt, truncated, foreign or holds impossible values."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def quarantine(path: Path, reason: str, quarantine_dir: Path, name: str | None = None) -> Path:
    """Move `path` into `quarantine_dir` with a JSON note of why; returns the new location.

    `name` is the granule's real file name when `path` is still a download's temp file. When
    the same bytes are already quarantined under that name, `path` is removed and the earlier
    copy returned: no new copy, no new note.
    """
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    name = name or path.name
    digest = file_sha256(path) if path.is_file() else None
    earlier = _quarantined_copy(quarantine_dir, name, digest, path.stat().st_size) if digest else None
    if earlier is not None:
        path.unlink()
        log.info("%s: the same file (sha256 %s) is already quarantined as %s; no new note", path, digest,
                 earlier)
        return earlier
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    target = quarantine_dir / f"{stamp}_{name}"
    n = 1
    while target.exists() or target.with_name(target.name + ".json").exists():
        # Another file of that name within the same second: never over an earlier copy.
        n += 1
        target = quarantine_dir / f"{stamp}-{n}_{name}"
    shutil.move(str(path), target)
    note = {"file": name, "quarantined_as": str(target), "reason": reason, "at": stamp, "sha256": digest}
    target.with_name(target.name + ".json").write_text(json.dumps(note, indent=2))
    log.warning("quarantined %s: %s", path, reason)
    return target


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _quarantined_copy(quarantine_dir: Path, name: str, digest: str, size: int) -> Path | None:
    """The copy of a file called `name` with this digest already in the quarantine, if any. Notes
    written before digests were recorded are matched by hashing their copy (same size only)."""
    for note_path in sorted(quarantine_dir.glob(f"*_{glob.escape(name)}.json")):
        try:
            note = json.loads(note_path.read_text())
        except (OSError, ValueError):
            continue
        copy = note_path.with_name(note_path.name[:-len(".json")])
        if not isinstance(note, dict) or note.get("file") != name or not copy.is_file():
            continue
        recorded = note.get("sha256")
        if recorded == digest:
            return copy
        if recorded is None and os.stat(copy).st_size == size and file_sha256(copy) == digest:
            return copy
    return None


def last_quarantine_note(quarantine_dir: Path | None, name: str) -> str | None:
    """The reason the latest quarantine of a file called `name` gave, if any: what a day waiting
    for that file reports while no good copy has come."""
    if quarantine_dir is None or not quarantine_dir.is_dir():
        return None
    notes = sorted(quarantine_dir.glob(f"*_{name}.json"))
    if not notes:
        return None
    try:
        note = json.loads(notes[-1].read_text())
        return f"quarantined at {note.get('at')}: {note.get('reason')}"
    except (OSError, ValueError):
        return None
