"""Moving a bad input file aside so the rest of the day goes on and the file can be fetched again."""

from __future__ import annotations

import json
import logging
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

    `name` is the granule's real file name when `path` is still a download's temp file.
    """
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    name = name or path.name
    target = quarantine_dir / f"{stamp}_{name}"
    shutil.move(str(path), target)
    note = {"file": name, "quarantined_as": str(target), "reason": reason, "at": stamp}
    target.with_name(target.name + ".json").write_text(json.dumps(note, indent=2))
    log.warning("quarantined %s: %s", path, reason)
    return target


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
