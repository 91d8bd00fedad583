"""What each archived day was made from, and whether that still holds.

Every day's COG carries, in its dataset tags (and its STAC item, derived from them):
- `model_name`, `model_version`: the champion that mapped it;
- `gosat_fit_id`: the GOSAT -> OCO fit its samples were fused with ('' when none was stored);
- `inputs_window`: the days whose observations the map used (the daily anomaly's window, the
  anchoring's trailing window, or the day alone);
- `inputs`: per day of that window, a digest of its sample file (tasks/samples/store.py) and of
  the ERA5 files its meteorology is computed from (`-` where there is none);
- `inputs_digest`: one sha256 over all of the above.

A day is *stale* when any of these differ from what mapping it now would record: another
champion, another fit, a window's sample file that appeared, changed or went, or replaced ERA5.
The digests are sha256 over file bytes (sample files are written deterministically), so a day
remapped from the same inputs gets the same tags and the same COG bytes; nothing here holds a
time. The comparison (`stale_reasons`) is a pure function of two records.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import rasterio
from rasterio.errors import RasterioError

from tasks.archive.layout import archived_days, day_cog_path
from tasks.covariates.meteorology import era5_files_for_day
from tasks.samples.store import day_file

DIGEST_CHARS = 16  # per file: 64 bits tell a changed file from an unchanged one
ABSENT = "-"
NO_RECORD = "no record of its inputs (mapped before they were recorded, or its COG cannot be read)"


@dataclass(frozen=True)
class DayInputs:
    """One day of a map's window: digests of its sample file and of its meteorology (ABSENT: none)."""

    day: date
    samples: str
    meteorology: str


@dataclass(frozen=True)
class Provenance:
    """What one archived day was made from (see the module's docstring)."""

    model_name: str
    model_version: str
    gosat_fit_id: str
    window: tuple[date, date]
    days: tuple[DayInputs, ...]

    @property
    def digest(self) -> str:
        return hashlib.sha256(_canonical(self).encode()).hexdigest()

    def to_tags(self) -> dict[str, str]:
        """The COG tags of the record beside model_name/model_version (which map_day writes itself)."""
        return {"gosat_fit_id": self.gosat_fit_id,
                "inputs_window": f"{self.window[0].isoformat()}/{self.window[1].isoformat()}",
                "inputs_digest": self.digest,
                "inputs": json.dumps({d.day.isoformat(): {"samples": d.samples, "meteorology": d.meteorology}
                                      for d in self.days}, separators=(",", ":"))}

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> "Provenance | None":
        """The record read back from a COG's tags; None when it has none or it cannot be read."""
        try:
            first, last = (date.fromisoformat(t) for t in tags["inputs_window"].split("/"))
            days = tuple(DayInputs(date.fromisoformat(d), str(v["samples"]), str(v["meteorology"]))
                         for d, v in json.loads(tags["inputs"]).items())
            return cls(tags.get("model_name", ""), tags.get("model_version", ""), tags["gosat_fit_id"],
                       (first, last), days)
        except (KeyError, ValueError, TypeError, AttributeError):
            return None


def _canonical(p: Provenance) -> str:
    return json.dumps([p.model_name, p.model_version, p.gosat_fit_id, p.window[0].isoformat(),
                       p.window[1].isoformat(), [[d.day.isoformat(), d.samples, d.meteorology] for d in p.days]],
                      separators=(",", ":"))


def stale_reasons(recorded: Provenance | None, current: Provenance) -> list[str]:
    """Why a day recorded as `recorded` differs from mapping it now (`current`); empty: still true."""
    if recorded is None:
        return [NO_RECORD]
    reasons = []
    if (recorded.model_name, recorded.model_version) != (current.model_name, current.model_version):
        reasons.append(f"champion {recorded.model_name} v{recorded.model_version} -> "
                       f"{current.model_name} v{current.model_version}")
    if recorded.gosat_fit_id != current.gosat_fit_id:
        reasons.append(f"GOSAT fit {recorded.gosat_fit_id or 'none'} -> {current.gosat_fit_id or 'none'}")
    if recorded.window != current.window:
        reasons.append(f"input window {recorded.window[0]}/{recorded.window[1]} -> "
                       f"{current.window[0]}/{current.window[1]}")
    return reasons + input_changes(recorded, current)


def input_changes(recorded: Provenance | None, current: Provenance) -> list[str]:
    """The part of `stale_reasons` about the window's own files: samples or ERA5 that arrived,
    changed or went (not another champion or fit, which `xco2 backfill --stale` redoes)."""
    if recorded is None:
        return []
    reasons = []
    before = {d.day: d for d in recorded.days}
    for what in ("samples", "meteorology"):
        changes: dict[str, list[str]] = {"arrived": [], "changed": [], "went": []}
        for now in current.days:
            then = before.get(now.day)
            old, new = (getattr(then, what) if then else ABSENT), getattr(now, what)
            if old == new:
                continue
            kind = "arrived" if old == ABSENT else "went" if new == ABSENT else "changed"
            changes[kind].append(now.day.isoformat())
        reasons += [f"{what} of {', '.join(days)} {kind}" for kind, days in changes.items() if days]
    return reasons


def input_window(day: date, field_window_days: int | None, anchor_window_days: int | None) -> tuple[date, date]:
    """The days a map of `day` draws observations from: ±field window (daily anomaly), the
    trailing anchoring window, or the day alone (its meteorology only)."""
    if field_window_days is not None:
        return day - timedelta(days=field_window_days), day + timedelta(days=field_window_days)
    if anchor_window_days is not None:
        return day - timedelta(days=anchor_window_days), day
    return day, day


class InputDigests:
    """Digests of sample files and ERA5 files, each file hashed once per (size, mtime) in this object."""

    def __init__(self, region_dir: Path, era5_dir: Path) -> None:
        self.region_dir, self.era5_dir = Path(region_dir), Path(era5_dir)
        self._files: dict[tuple[Path, int, int], str] = {}

    def file(self, path: Path) -> str:
        try:
            st = path.stat()
        except FileNotFoundError:
            return ABSENT
        key = (path, st.st_size, st.st_mtime_ns)
        if key not in self._files:
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            self._files[key] = h.hexdigest()[:DIGEST_CHARS]
        return self._files[key]

    def day(self, day: date) -> DayInputs:
        files = [self.file(p) for p in era5_files_for_day(self.era5_dir, day)]
        meteorology = (ABSENT if all(f == ABSENT for f in files)
                       else hashlib.sha256(":".join(files).encode()).hexdigest()[:DIGEST_CHARS])
        return DayInputs(day, self.file(day_file(self.region_dir, day)), meteorology)

    def provenance(self, model_name: str, model_version: str, gosat_fit_id: str,
                   window: tuple[date, date]) -> Provenance:
        days = [window[0] + timedelta(days=i) for i in range((window[1] - window[0]).days + 1)]
        return Provenance(model_name, str(model_version), gosat_fit_id, window, tuple(self.day(d) for d in days))


def recorded_provenance(archive_root: Path | str, region_name: str, day: date) -> Provenance | None:
    """The record in an archived day's COG (None: none, or the COG cannot be read)."""
    try:
        with rasterio.open(day_cog_path(archive_root, region_name, day)) as src:
            return Provenance.from_tags(src.tags())
    except (RasterioError, OSError):
        return None


def stale_archive_days(archive_root: Path | str, region_name: str, days: Iterable[date],
                       current: Callable[[date], Provenance], inputs_only: bool = False) -> dict[date, list[str]]:
    """{day: why} of the archived days among `days` whose record differs from `current(day)`, in
    order; `inputs_only`: only where the window's samples or ERA5 changed (`input_changes`)."""
    archived = set(archived_days(archive_root, region_name))
    reasons_of = input_changes if inputs_only else stale_reasons
    out = {}
    for day in sorted(set(days) & archived):
        reasons = reasons_of(recorded_provenance(archive_root, region_name, day), current(day))
        if reasons:
            out[day] = reasons
    return out


def day_models(archive_root: Path | str, region_name: str, first: date | None = None,
               last: date | None = None) -> dict[date, tuple[str, str]]:
    """{day: (model_name, model_version)} of the archived days in [first, last]; a COG without the
    tags (written by hand, or before they existed) or that cannot be opened maps to ('', '')."""
    out = {}
    for day in archived_days(archive_root, region_name):
        if (first and day < first) or (last and day > last):
            continue
        try:
            with rasterio.open(day_cog_path(archive_root, region_name, day)) as src:
                tags = src.tags()
        except (RasterioError, OSError):  # unreadable: made by nothing we know, so stale
            tags = {}
        out[day] = (tags.get("model_name", ""), tags.get("model_version", ""))
    return out


def stale_days(archive_root: Path | str, region_name: str, model_name: str, version: int | str,
               first: date | None = None, last: date | None = None) -> list[date]:
    """Archived days in [first, last] made by anything other than `model_name` version `version`."""
    wanted = (model_name, str(version))
    return sorted(d for d, made_by in day_models(archive_root, region_name, first, last).items() if made_by != wanted)
