"""The start-of-run check of derived state: damaged files are set aside and recomputed.

Everything under `regions/<region>/` is derived: static covariates from `raw/static`, gridded
cells from the day's raw granules, samples from gridded cells + ERA5 + covariates. A file cut
short (a full disk, a killed copy, a restore gone wrong) would otherwise fail every run, or pass
the daily run and break the next retrain. So each run first checks every such file cheaply
(Parquet footer, column chunks inside the file, schema; .npy header against the file size and
the grid), moves a damaged one to `<data>/quarantine/state/` with a .json note, and recomputes it
from what it was made of, in dependency order: covariates, then gridded cells, then samples.

Killed writers also leave hidden temp files; those of writers that are no longer running are
removed here too (tasks/io/integrity.py judges the files and the temp files).

A sample file of another feature-set version is not damage: reading it says to re-ingest.
Files of the previous schema (gridded cells without `weight`, a GOSAT day without footprints,
samples without `weight`/`fit_id`) are not damage either: they are recomputed in place, not
set aside.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import date, datetime, timezone
from pathlib import Path

from tasks.covariates.features import NDVI_NAMES, STATIC_NAMES
from tasks.covariates.static import CovariateError, build_covariates, covariates_dir
from tasks.fusion.merge import GosatFit
from tasks.gridding.geometry import Grid
from tasks.io.atomic import write_json
from tasks.io.integrity import STALE_TEMP_AFTER_S, Finding, Logger, npy_problem, parquet_problem, remove_dead_temp_files
from tasks.covariates.day import day_readiness
from tasks.samples import ingest
from tasks.samples import store as samples
from tasks.settings import Settings
from tasks.sources.products import SATELLITES
from tasks.sources.pull import raw_granules

log = logging.getLogger(__name__)


def check_state(settings: Settings, grid: Grid, stale_after_s: float = STALE_TEMP_AFTER_S,
                logger: Logger | None = None) -> list[Finding]:
    """Check and heal every piece of derived state of the configured region; what was found.

    Each finding is logged naming its file (`logger`: a flow's run logger, so the run's own log
    says it)."""
    logger = logger or log
    findings = remove_dead_temp_files(_temp_roots(settings), stale_after_s, logger)
    repairs = _check_covariates(settings, grid) + _check_gridded(settings, grid) + _check_samples(settings, grid)
    for f in repairs:
        logger.warning("state check: %s %s: %s; %s", f.kind, f.path, f.problem, f.action)
    return findings + repairs


# ---- temp files of dead writers -------------------------------------------------------------

def _temp_roots(settings: Settings) -> list[Path]:
    data = settings.data_dir
    roots = [settings.raw_dir, data / "regions", settings.archive_root, data / "models", settings.quarantine_dir,
             data / "reports"]
    return list(dict.fromkeys(roots))


# ---- setting aside --------------------------------------------------------------------------

def set_aside(path: Path, kind: str, problem: str, settings: Settings) -> Path | None:
    """Move a damaged state file to quarantine/state/ with a .json note; the new location, or
    None when the file is gone already (a concurrent run set it aside and is repairing it)."""
    folder = settings.quarantine_dir / "state"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        relative = path.relative_to(settings.data_dir)
    except ValueError:
        relative = path
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    # The relative path flattened: every day's sample file is called part-0.parquet.
    target = folder / f"{stamp}_{'__'.join(relative.parts).lstrip('/')}"
    n = 1
    while target.exists():
        target = target.with_name(f"{stamp}-{n}_{'__'.join(relative.parts).lstrip('/')}")
        n += 1
    try:
        shutil.move(str(path), target)
    except FileNotFoundError:
        return None
    write_json(target.with_name(target.name + ".json"),
               {"file": str(path), "kind": kind, "problem": problem, "quarantined_as": str(target), "at": stamp})
    return target


# ---- covariates ---------------------------------------------------------------------------

def _check_covariates(settings: Settings, grid: Grid) -> list[Finding]:
    folder = covariates_dir(settings.region_dir)
    if not folder.is_dir():
        return []
    damaged: list[tuple[Path, str, str]] = []
    meta_path = folder / "static.json"
    meta = None
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            damaged.append((meta_path, "covariates metadata", f"unreadable JSON ({exc})"))
            meta = None
    # Shapes are only owed to this grid when the layers were built for it (else they get rebuilt anyway).
    grid_desc = {"west": grid.west, "south": grid.south, "east": grid.east, "north": grid.north,
                 "step": grid.step, "ny": grid.ny, "nx": grid.nx}
    for_this_grid = meta is not None and meta.get("grid") == grid_desc
    static = folder / "static.npy"
    if static.is_file():
        why = npy_problem(static, (len(STATIC_NAMES),) + grid.shape if for_this_grid else None)
        if why:
            damaged.append((static, "static covariates", why))
    for ndvi in sorted((folder / "ndvi").glob("*.npy")):
        why = npy_problem(ndvi, (len(NDVI_NAMES),) + grid.shape if for_this_grid else None)
        if why:
            damaged.append((ndvi, "NDVI covariates", why))
    if not damaged:
        return []
    moved = {path: set_aside(path, kind, why, settings) for path, kind, why in damaged}
    damaged = [(path, kind, why) for path, kind, why in damaged if moved[path] is not None]
    if not damaged:
        return []
    static_dir = settings.raw("static")
    try:
        # What is missing now is built again; what is intact is kept (build_covariates' own rule).
        build_covariates(static_dir, grid, settings.region_dir)
        outcome = f"rebuilt from {static_dir}"
    except (CovariateError, OSError, ValueError) as exc:
        outcome = f"could not be rebuilt from {static_dir}: {exc}"
    return [Finding(kind, str(path), why, f"moved to {moved[path]}; {outcome}") for path, kind, why in damaged]


# ---- gridded cells ------------------------------------------------------------------------

# A file of the previous schema is whole: it is recomputed where it lies, not set aside.
UPGRADED = "upgraded in place"


def _where(moved: Path | str, outcome: str) -> str:
    return f"{UPGRADED}: {outcome}" if moved == UPGRADED else f"moved to {moved}; {outcome}"


def _check_gridded(settings: Settings, grid: Grid) -> list[Finding]:
    root = settings.region_dir / "gridded"
    findings: list[Finding] = []
    if not root.is_dir():
        return findings
    for source_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        source = source_dir.name
        for path in sorted(source_dir.glob("*.parquet")):
            why = parquet_problem(path, ingest.GRIDDED_SCHEMA)
            upgrade = why is not None and parquet_problem(path, ingest.PREVIOUS_GRIDDED_SCHEMA) is None
            if upgrade:
                why = "gridded by an earlier version (no weight column)"
            elif why is None and source in ingest.FOOTPRINT_SOURCES:
                footprints = settings.region_dir / "footprints" / source / path.name
                if not footprints.is_file():
                    why, upgrade = f"gridded by an earlier version (no footprints file {footprints})", True
                else:
                    broken = parquet_problem(footprints, ingest.FOOTPRINT_SCHEMA)
                    if broken is None:
                        continue
                    # The footprints are what is damaged; the cells are re-made with them.
                    path, why = footprints, broken
            if why is None:
                continue
            moved: Path | str | None = UPGRADED if upgrade else set_aside(path, "gridded cells", why, settings)
            if moved is None:
                continue
            try:
                day = date.fromisoformat(path.stem)
                granules = raw_granules(settings, source).get(day, []) if source in SATELLITES else None
                if granules is None:
                    raise ValueError(f"{source} is not a satellite product")
                if upgrade and not granules:
                    # Gridding nothing would replace whole cells with none: keep them and say so.
                    raise FileNotFoundError(f"no raw {source} granules of {day} left to grid it from; restore them "
                                            f"under {settings.raw(source)}")
                # Only this source: the day's other gridded files are intact and stay as they are.
                result = ingest.grid_day(day, {source: granules}, grid, settings.region_dir,
                                         settings.quarantine_dir, manifest_path=settings.manifest_path)
                outcome = (f"gridded again from {len(granules)} raw granules "
                           f"({result.soundings.get(source, 0)} soundings)")
                if result.quarantined:
                    outcome += f"; {len(result.quarantined)} of them quarantined"
            except Exception as exc:  # noqa: BLE001 - one day's repair must not stop the run's check
                outcome = f"could not be gridded again: {type(exc).__name__}: {exc}"
            findings.append(Finding("gridded cells", str(path), why, _where(moved, outcome)))
    return findings


# ---- samples ------------------------------------------------------------------------------

def _current_fit(region_dir: Path, grid: Grid) -> GosatFit:
    # The fit the store's days are sampled with; fitted from gridded cells if none is stored.
    return ingest.current_gosat_fit(region_dir, grid)


def _check_samples(settings: Settings, grid: Grid) -> list[Finding]:
    region_dir = settings.region_dir
    damaged: list[tuple[date, Path, str, Path | str]] = []
    for day in samples.stored_days(region_dir):
        path = samples.day_file(region_dir, day)
        why = parquet_problem(path, samples.SCHEMA)
        if why and parquet_problem(path, samples.PREVIOUS_SCHEMA) is None:
            # Written before weights and fit ids: re-fused from the gridded files, in place.
            damaged.append((day, path, "written by an earlier version (no weight or fit_id column)",
                            UPGRADED))
            continue
        aside = set_aside(path, "samples", why, settings) if why else None
        if why and aside is not None:
            damaged.append((day, path, why, aside))
    findings: list[Finding] = []
    if not damaged:
        return findings
    era5_dir = settings.raw("era5")
    fit = None
    for day, path, why, moved in damaged:
        try:
            # As the daily update judges it: a bad ERA5 file is quarantined and the day waits, as
            # does a day fed by a quarantined NDVI composite.
            inputs = day_readiness(era5_dir, day, region_dir, settings.quarantine_dir,
                                   settings.manifest_path)
            if not inputs.ready:
                what = "ERA5" if not inputs.era5.ready else "NDVI"
                raise FileNotFoundError(f"{what} for {day} is not usable ({inputs.why}); the daily update samples "
                                        "the day when it is")
            fit = fit or _current_fit(region_dir, grid)
            n = ingest.sample_day(region_dir, era5_dir, grid, day, fit)
            outcome = f"sampled again: {n} samples"
        except Exception as exc:  # noqa: BLE001 - one day's repair must not stop the run's check
            outcome = f"could not be sampled again: {type(exc).__name__}: {exc}"
        findings.append(Finding("samples", str(path), why, _where(moved, outcome)))
    return findings

