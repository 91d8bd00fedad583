"""A day's granules to gridded cells, fused targets and training samples (steps 1-3).

The GOSAT -> OCO fit is stored in `<region_dir>/gosat_fit.json` with the last day of data it saw
and a digest of that data: the daily update uses it as it is (fitting one only when none is
stored) unless that data has since grown or changed (`gosat_fit_for_daily`), and the retrain
refits it on every gridded day; both re-fuse the sample days it changes
(`refit_gosat_and_refuse`). docs/fusion.md."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.io.atomic import atomic_path, write_json
from tasks.io.file_digests import FileDigests
from tasks.covariates.features import DayLayers
from tasks.fusion.merge import GosatFit, collocations, fit_gosat_to_oco, fuse_day, merge_oco
from tasks.gridding.geometry import Grid
from tasks.gridding.cells import FOOTPRINT_DTYPES, empty_footprints, grid_soundings, sounding_footprints
from tasks.io.quarantine import InputFileError, quarantine
from tasks.gridding.soundings import usable_soundings

log = logging.getLogger(__name__)

GRIDDED_COLUMNS = {"cell": "int64", "xco2": "float64", "xco2_uncertainty": "float64", "n_soundings": "int32",
                   "weight": "float64"}
GRIDDED_SCHEMA = pa.schema([pa.field(name, pa.from_numpy_dtype(np.dtype(kind))) for name, kind in GRIDDED_COLUMNS.items()])
# Written before cells carried their independent-sounding weight: re-gridded from the raw granules.
PREVIOUS_GRIDDED_SCHEMA = pa.schema([f for f in GRIDDED_SCHEMA if f.name != "weight"])
FOOTPRINT_SCHEMA = pa.schema([pa.field(name, pa.from_numpy_dtype(np.dtype(kind)))
                              for name, kind in FOOTPRINT_DTYPES.items()])
# The sources whose soundings' footprints are kept: GOSAT's, for the fit's collocations.
FOOTPRINT_SOURCES = ("gosat",)


class GriddedStoreError(ValueError):
    """A gridded cells file cannot be read back; the message names it."""


@dataclass
class DayGridding:
    day: date
    cells: dict[str, pd.DataFrame]
    soundings: dict[str, int] = field(default_factory=dict)  # usable soundings per source
    granules: dict[str, int] = field(default_factory=dict)
    quarantined: list[dict] = field(default_factory=list)


def gridded_file(region_dir: Path, source: str, day: date) -> Path:
    return region_dir / "gridded" / source / f"{day.isoformat()}.parquet"


def footprint_file(region_dir: Path, source: str, day: date) -> Path:
    return region_dir / "footprints" / source / f"{day.isoformat()}.parquet"


def gosat_fit_file(region_dir: Path) -> Path:
    return region_dir / "gosat_fit.json"


def fit_inputs_digests_file(region_dir: Path) -> Path:
    """The remembered digests of the files a GOSAT fit is made from (a cache: tasks/io/file_digests.py)."""
    return region_dir / "gosat_fit_inputs.digests.json"


def grid_day(day: date, granules: dict[str, list[Path]], grid: Grid, region_dir: Path,
             quarantine_dir: Path, manifest_path: Path | None = None) -> DayGridding:
    """Read, filter and grid each satellite's granules of one day. Implausible soundings are
    dropped one by one (counted per reason in the log); a granule that cannot be read is
    quarantined and, with `manifest_path`, marked in the manifest so it is not pulled again."""
    from tasks.readers import read_soundings

    result = DayGridding(day=day, cells={})
    for source, paths in granules.items():
        frames = []
        for path in paths:
            try:
                frames.append(usable_soundings(read_soundings(path), grid, day=day, label=path.name))
            except InputFileError as exc:
                moved = quarantine(path, exc.problem, quarantine_dir)
                result.quarantined.append({"source": source, "file": path.name, "problem": exc.problem,
                                           "quarantined_as": str(moved)})
                if manifest_path is not None:
                    from tasks.sources.manifest import Manifest

                    Manifest(manifest_path).mark_quarantined(
                        source, path.name, f"quarantined at gridding as {moved.name}: {exc.problem}")
        soundings = pd.concat(frames, ignore_index=True) if frames else None
        n = 0 if soundings is None else len(soundings)
        cells = grid_soundings(soundings, grid) if n else _empty_cells()
        result.cells[source] = cells
        result.soundings[source] = n
        result.granules[source] = len(paths)
        if source in FOOTPRINT_SOURCES:
            # Before the cells: a gridded GOSAT day is only complete with its footprints.
            write_footprints(region_dir, source, day, sounding_footprints(soundings, grid) if n else empty_footprints())
        write_gridded(region_dir, source, day, cells)
    return result


def _write_parquet(path: Path, frame: pd.DataFrame, read_back: Callable[..., pd.DataFrame], rows: str) -> Path:
    """The gridded store's one writer: `frame` to `path` through a temp sibling that is read back
    whole (`read_back`, the store's reader of that kind of file) before it replaces `path`, so a
    short write (full disk) never replaces a good file. `rows` names the rows in the error."""

    def reads_back_whole(tmp: Path) -> None:
        written = read_back(tmp, shown_as=path)
        if len(written) != len(frame):
            raise GriddedStoreError(f"{path}: wrote {len(frame)} {rows}, read back {len(written)}")

    with atomic_path(path, verify=reads_back_whole) as tmp:
        frame.to_parquet(tmp, index=False)
    return path


def _read_table(path: Path, shown: Path, kind: str) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise GriddedStoreError(f"{shown}: unreadable {kind} file ({exc}); the next run's state check "
                                "sets it aside and grids the day again") from None


def write_footprints(region_dir: Path, source: str, day: date, footprints: pd.DataFrame) -> Path:
    return _write_parquet(footprint_file(region_dir, source, day), footprints.astype(FOOTPRINT_DTYPES),
                          _read_footprints, "footprint cells")


def _read_footprints(path: Path, shown_as: Path | None = None) -> pd.DataFrame:
    shown = shown_as or path
    table = _read_table(path, shown, "footprints")
    if not table.schema.remove_metadata().equals(FOOTPRINT_SCHEMA):
        raise GriddedStoreError(f"{shown}: columns {table.schema.names} differ from the footprints' "
                                f"{FOOTPRINT_SCHEMA.names}")
    return table.to_pandas()


def load_footprints(region_dir: Path, source: str, days: Iterable[date]) -> dict[date, pd.DataFrame]:
    """The footprints of `source` on `days` (its gridded days); a gridded day without them was
    gridded before footprints were kept: the error says how to get them."""
    out: dict[date, pd.DataFrame] = {}
    for day in days:
        path = footprint_file(region_dir, source, day)
        if not path.is_file():
            raise GriddedStoreError(
                f"{path}: missing: {gridded_file(region_dir, source, day)} was gridded by an earlier version that "
                "kept no footprints; the state check of the next daily run or retrain grids the day again from "
                "its raw granules")
        out[day] = _read_footprints(path)
    return out


def write_gridded(region_dir: Path, source: str, day: date, cells: pd.DataFrame) -> Path:
    return _write_parquet(gridded_file(region_dir, source, day), cells.astype(GRIDDED_COLUMNS), _read_gridded, "cells")


def _read_gridded(path: Path, shown_as: Path | None = None) -> pd.DataFrame:
    shown = shown_as or path
    table = _read_table(path, shown, "gridded cells")
    got = [(f.name, f.type) for f in table.schema]
    want = [(f.name, f.type) for f in GRIDDED_SCHEMA]
    if got == [(f.name, f.type) for f in PREVIOUS_GRIDDED_SCHEMA]:
        raise GriddedStoreError(f"{shown}: gridded by an earlier version (no weight column); the state check of the "
                                "next daily run or retrain grids the day again from its raw granules")
    if got != want:
        raise GriddedStoreError(f"{shown}: columns {got} differ from the gridded cells' {want}")
    return table.to_pandas()


def _empty_cells() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in GRIDDED_COLUMNS.items()})


def load_gridded(region_dir: Path, source: str) -> dict[date, pd.DataFrame]:
    folder = region_dir / "gridded" / source
    out = {}
    for p in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
        out[date.fromisoformat(p.stem)] = _read_gridded(p)
    return out


def _gridded_days(region_dir: Path, source: str) -> list[date]:
    folder = region_dir / "gridded" / source
    return sorted(date.fromisoformat(p.stem) for p in folder.glob("*.parquet")) if folder.is_dir() else []


def _fit_on(region_dir: Path, grid: Grid, through: date | None) -> GosatFit:
    """The fit on every GOSAT sounding gridded on a day up to `through` (None: every day) that OCO
    observed the same day nearby (one collocation per sounding, tasks/fusion/merge.py); not stored."""
    def upto(by_day: dict[date, pd.DataFrame]) -> dict[date, pd.DataFrame]:
        return {d: f for d, f in by_day.items() if through is None or d <= through}

    oco2, oco3 = upto(load_gridded(region_dir, "oco2")), upto(load_gridded(region_dir, "oco3"))
    gosat_days = [d for d in _gridded_days(region_dir, "gosat") if through is None or d <= through]
    empty = _empty_cells()
    oco_days = set(oco2) | set(oco3)
    oco_by_day = {d: merge_oco(oco2.get(d, empty), oco3.get(d, empty)) for d in oco_days}
    footprints = load_footprints(region_dir, "gosat", [d for d in gosat_days if d in oco_days])
    return fit_gosat_to_oco(collocations(oco_by_day, footprints, grid))


def fit_inputs_digest(region_dir: Path, through: date | None) -> str:
    """A digest of what a fit through `through` is made from: for every gridded GOSAT day up to
    it, the bytes of its footprints and of that day's OCO-2 and OCO-3 cells. A GOSAT day that
    arrives late, or a day re-gridded with other soundings, changes it. The files' own digests
    are remembered (`fit_inputs_digests_file`): a nightly run reads only the files written since,
    not the whole history."""
    h = hashlib.sha256()
    files = FileDigests(fit_inputs_digests_file(region_dir))
    for day in _gridded_days(region_dir, "gosat"):
        if through is not None and day > through:
            continue
        for path in (footprint_file(region_dir, "gosat", day), gridded_file(region_dir, "gosat", day),
                     gridded_file(region_dir, "oco2", day), gridded_file(region_dir, "oco3", day)):
            h.update(f"{path.parent.name}/{path.name}:".encode())
            digest = files.sha256(path)
            h.update(bytes.fromhex(digest) if digest is not None else b"-")
    files.save()
    return h.hexdigest()


def _data_through(region_dir: Path) -> date | None:
    days = [d for s in ("oco2", "oco3", "gosat") for d in _gridded_days(region_dir, s)]
    return max(days) if days else None


def fit_gosat(region_dir: Path, grid: Grid, through: date | None = None) -> GosatFit:
    """Step 2's linear map GOSAT -> OCO on every GOSAT sounding gridded up to `through` (None:
    so far) that OCO observed the same day; stored as the current fit with the last day of data
    it saw (`data_through`) and the digest of its inputs (`inputs_digest`)."""
    through = through or _data_through(region_dir)
    fit = _fit_on(region_dir, grid, through)
    write_json(gosat_fit_file(region_dir), {**fit.to_dict(), "data_through": through.isoformat() if through else None,
                                            "inputs_digest": fit_inputs_digest(region_dir, through)})
    log.info("GOSAT -> OCO fit: %s", fit.to_dict())
    return fit


def stored_gosat_fit(region_dir: Path) -> GosatFit | None:
    """The current fit, or None when none is stored or the stored one cannot be used."""
    path = gosat_fit_file(region_dir)
    try:
        return GosatFit.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unusable stored GOSAT fit (%s); fitting it again", path, exc)
        return None


def current_gosat_fit(region_dir: Path, grid: Grid) -> GosatFit:
    """What the daily update maps with: the stored fit; a fit on the gridded days when none is."""
    return stored_gosat_fit(region_dir) or fit_gosat(region_dir, grid)


def _stored_record(region_dir: Path) -> tuple[date | None, str | None]:
    """(data_through, inputs_digest) stored with the fit; (None, None) for a fit stored before them."""
    try:
        data = json.loads(gosat_fit_file(region_dir).read_text())
        through = data.get("data_through")
        return (date.fromisoformat(through) if through else None), data.get("inputs_digest")
    except (OSError, ValueError, TypeError, AttributeError):
        return None, None


@dataclass
class Refit:
    fit: GosatFit
    previous_fit_id: str | None
    rewritten: list[date]          # sample days whose GOSAT targets changed
    resampled: list[date]          # of those, the days whose features had to be recomputed
    unchanged: int
    why: str = "retrain"           # what made it refit

    def to_dict(self) -> dict:
        return {"fit": self.fit.to_dict(), "previous_fit_id": self.previous_fit_id,
                "rewritten": [d.isoformat() for d in self.rewritten],
                "resampled": [d.isoformat() for d in self.resampled], "unchanged": self.unchanged, "why": self.why}


def gosat_fit_for_daily(region_dir: Path, era5_dir: Path, grid: Grid) -> tuple[GosatFit, Refit | None]:
    """The fit a daily run fuses with, and the refit when there was one.

    The stored fit holds until the retrain, except when the data it was made on (the gridded
    GOSAT days up to its `data_through`, with their OCO) has since grown or changed: a GOSAT
    granule delivered late, a day re-gridded. Then it is refitted on the same days, as an
    undisturbed run would have made it, and the sample days it fused are re-fused. New days
    after `data_through` wait for the retrain, so the fit (and every sample's fit_id) does not
    move with every night's data. A fit stored before the record is checked against its last
    collocated day."""
    stored = stored_gosat_fit(region_dir)
    if stored is None:
        return fit_gosat(region_dir, grid), None
    through, digest = _stored_record(region_dir)
    if through is None and stored.fitted_days is not None:
        through = stored.fitted_days[1]
    now = fit_inputs_digest(region_dir, through)
    if digest == now:
        return stored, None
    candidate = _fit_on(region_dir, grid, through)
    if candidate.fit_id == stored.fit_id:  # other bytes, same collocations: the fit holds
        write_json(gosat_fit_file(region_dir), {**stored.to_dict(),
                                                "data_through": through.isoformat() if through else None,
                                                "inputs_digest": now})
        return stored, None
    refit = refit_gosat_and_refuse(region_dir, era5_dir, grid, through=through)
    refit.why = (f"its GOSAT days through {through or 'the last gridded day'} changed: "
                 f"{stored.n_collocations} -> {refit.fit.n_collocations} collocations")
    return refit.fit, refit


def refit_gosat_and_refuse(region_dir: Path, era5_dir: Path, grid: Grid, through: date | None = None) -> Refit:
    """Refit GOSAT -> OCO on every gridded day (up to `through`), store it, and re-fuse each sample day whose GOSAT
    rows carry another fit_id. Only the targets change, so the stored features are kept; a day
    whose fused cells no longer match its stored ones (gridded since) is sampled afresh.
    Idempotent: a second call finds every day on the current fit and rewrites nothing."""
    from tasks.samples.store import read_day, stored_days, write_day

    previous = stored_gosat_fit(region_dir)
    fit = fit_gosat(region_dir, grid, through)
    rewritten, resampled, unchanged = [], [], 0
    for day in stored_days(region_dir):
        stored = read_day(region_dir, day)
        gosat_rows = stored["source"] == "gosat"
        if set(stored.loc[gosat_rows, "fit_id"]) <= {fit.fit_id}:
            unchanged += 1
            continue
        targets = fused_targets(region_dir, day, fit)
        same_cells = (len(targets) == len(stored)
                      and np.array_equal(targets["cell"].to_numpy(), stored["cell"].to_numpy())
                      and np.array_equal(targets["source"].to_numpy(), stored["source"].to_numpy()))
        if same_cells:
            frame = stored.drop(columns=["day"])
            for column in ("xco2", "xco2_uncertainty", "n_soundings", "weight", "fit_id"):
                frame[column] = targets[column].to_numpy()
            write_day(region_dir, day, frame)
        else:
            sample_day(region_dir, era5_dir, grid, day, fit)
            resampled.append(day)
        rewritten.append(day)
    log.info("GOSAT refit %s (was %s): %d sample days re-fused, %d unchanged", fit.fit_id,
             previous.fit_id if previous else "none", len(rewritten), unchanged)
    return Refit(fit, previous.fit_id if previous else None, rewritten, resampled, unchanged)


def fused_targets(region_dir: Path, day: date, fit: GosatFit) -> pd.DataFrame:
    empty = _empty_cells()
    read = lambda s: load_one(region_dir, s, day) if gridded_file(region_dir, s, day).is_file() else empty  # noqa: E731
    oco = merge_oco(read("oco2"), read("oco3"))
    return fuse_day(oco, read("gosat"), fit)


def load_one(region_dir: Path, source: str, day: date) -> pd.DataFrame:
    return _read_gridded(gridded_file(region_dir, source, day))


def sample_day(region_dir: Path, era5_dir: Path, grid: Grid, day: date, fit: GosatFit) -> int:
    """Step 3 for one day: fused targets with their features, stored; the number of samples.

    The daily update and the state check's re-sampling both come through here, so a recomputed
    day is the day the daily update would have written."""
    from tasks.covariates.static import StaticCovariates
    from tasks.covariates.day import day_layers
    from tasks.samples.store import write_day

    targets = fused_targets(region_dir, day, fit)
    layers = day_layers(StaticCovariates(region_dir), era5_dir, grid, day)
    frame = day_samples(targets, layers, grid)
    write_day(region_dir, day, frame)
    return len(frame)


def day_samples(targets: pd.DataFrame, layers: DayLayers, grid: Grid) -> pd.DataFrame:
    """Fused targets joined with their cell's feature vector."""
    from tasks.covariates.features import FEATURE_NAMES

    cells = targets["cell"].to_numpy(dtype=np.int64)
    rows, cols = grid.cell_rowcol(cells)
    features = layers.for_cells(rows, cols)
    out = pd.DataFrame({
        "cell": cells,
        "row": rows.astype(np.int32),
        "col": cols.astype(np.int32),
        "xco2": targets["xco2"].to_numpy(np.float64),
        "xco2_uncertainty": targets["xco2_uncertainty"].to_numpy(np.float64),
        "source": targets["source"].astype(str).to_numpy(),
        "n_soundings": targets["n_soundings"].to_numpy(np.int32),
        "weight": targets["weight"].to_numpy(np.float64),
        "fit_id": targets["fit_id"].astype(str).to_numpy(),
    })
    feat = pd.DataFrame(features, columns=list(FEATURE_NAMES))
    return pd.concat([out, feat], axis=1)
