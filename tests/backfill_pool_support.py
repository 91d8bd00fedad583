"""Stand-ins for the backfill pool's worker functions (tests/test_backfill.py).

A module of their own, importing next to nothing: spawned workers import the module that defines
the functions they are sent, and the test module would bring Prefect, MLflow and torch with it.
"""

from __future__ import annotations

import os
import signal
from datetime import date

DIES = date(2020, 6, 3)
RAISES = date(2020, 6, 4)


def fake_predictor(settings, champion, threads):
    return {"threads": threads}


def fake_map_one(settings, grid, day, predictor, champion):
    """map_day's stand-in: DIES is killed (SIGKILL) mid-write leaving a temp COG, RAISES raises."""
    folder = settings.archive_root / settings.region.name / "2020"
    folder.mkdir(parents=True, exist_ok=True)
    if day == DIES:
        (folder / f".xco2_{settings.region.name}_{day:%Y%m%d}.tif.{os.getpid()}.0badc0de.tmp").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGKILL)
    if day == RAISES:
        raise ValueError("no ERA5 for this day")
    path = folder / f"{day}.txt"
    path.write_text(f"{day} {predictor['threads']}")
    return {"day": day.isoformat(), "path": str(path), "pid": os.getpid()}
