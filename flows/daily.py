"""The daily update: pull new inputs, grid, fuse, update samples, extend the archive."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from prefect import flow, get_run_logger

from registry.champion import ChampionModel, ChampionNotFoundError, load_champion
from tasks.mapping.onnx_runtime import OnnxPredictor
from tasks import prefect_tasks
from tasks.mapping.day import current_provenance, mapping_window
from tasks.samples import store as samples
from tasks.archive import archived_days
from tasks.archive.health import check_archive
from tasks.archive.provenance import stale_archive_days
from tasks.gridding.geometry import Grid
from tasks.covariates.static import CovariateError
from tasks.covariates.day import day_readiness, inputs_available
from tasks.settings import Settings, SourceMode, load_settings
from tasks.sources import raw_granules
from tasks.sources.pull import CDS_SERVICE, EverySourceFailed, every_source_failed
from tasks.sources.products import SATELLITES
from tasks.steps import daily as steps
from tasks.steps.artifacts import Row
from tasks.steps.daily import ArchiveDaysFailed

__all__ = ["ArchiveDaysFailed", "daily_update", "extend_archive"]


@flow(name="xco2-daily-update", log_prints=True)
def daily_update(start: str | None = None, end: str | None = None,
                 overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Bring inputs, samples and the archive up to date for the days in [start, end]."""
    logger = get_run_logger()
    settings = load_settings(**(overrides or {}))
    grid = Grid.for_region(settings.region, settings.grid_step)
    region = settings.region.name
    first, last = steps.window(settings.ingest_lookback_days, start, end, today=settings.today)
    logger.info("region %s (%d x %d cells), days %s..%s, source %s",
                region, grid.nx, grid.ny, first, last, settings.source.value)
    # Before anything reads the store: damaged derived files are recomputed, dead writers' temp files go.
    state_findings = prefect_tasks.check_state(settings, grid)

    pulled = prefect_tasks.pull_inputs(settings, first, last + timedelta(days=1))
    nothing_pulled = every_source_failed(pulled)
    if nothing_pulled:
        # Nothing new can come in, and the later steps would fail on the same cause with a vaguer
        # message (no covariates, no samples): say why, then end Failed so that neither the exit
        # code nor Prefect calls this a success. The next run starts from where this one stopped.
        logger.error("%s", nothing_pulled)
        prefect_tasks.publish(steps.nothing_pulled_artifacts(first, last, region, pulled.failed, nothing_pulled))
        raise EverySourceFailed(nothing_pulled)
    # A CDS given up on this run is not asked for final ERA5 either.
    if settings.source == SourceMode.earthdata and CDS_SERVICE not in pulled.unreachable:
        # Final ERA5 replaces ERA5T months later: look for it over a window of older days.
        final_first, final_last = steps.era5_final_window(last, settings.era5_final_after_days,
                                                          settings.era5_final_window_days)
        steps.merge_final_era5(pulled, prefect_tasks.pull_inputs(settings, final_first, final_last, products=("era5",)))
    try:
        # A bad NDVI composite is quarantined here and holds back only its days (below).
        covariates_quarantined = prefect_tasks.build_static_covariates(settings, grid, set_aside=pulled.quarantined)
    except CovariateError as exc:
        # A bad static layer feeds every day: nothing can be sampled or mapped. Say which file and
        # why as the run's last word, after artifacts that show what the pull did.
        logger.error("%s", exc)
        prefect_tasks.publish(steps.covariates_failed_artifacts(
            first, last, region, pulled.n_fetched, pulled.quarantined + getattr(exc, "quarantined", []), exc))
        raise

    # Days to (re)grid: new or unsampled granules in the window, and days whose meteorology was replaced.
    granules = {s: raw_granules(settings, s) for s in SATELLITES}
    refreshed = steps.refreshed_days(pulled.replaced.get("era5", []))
    days = steps.days_to_grid(granules, steps.new_file_names(pulled), set(samples.stored_days(settings.region_dir)),
                              refreshed, first, last)
    gridded = [prefect_tasks.grid_day(settings, grid, d, steps.granules_of_day(granules, d)) for d in days]
    # The fit stays as the last retrain stored it (fitted here only when none is stored yet), so
    # every sample day carries the same fit_id; the retrain refits it and re-fuses the store. Only
    # when the GOSAT days it was made on have since grown or changed (a granule delivered late) is
    # it refitted here, on the same days, and the samples it fused re-fused.
    fit, gosat_refit = prefect_tasks.current_gosat_fit(settings, grid)

    era5_dir = settings.raw("era5")
    rows, meteo_quarantined = [], []
    for g in gridded:
        # A bad ERA5 file is quarantined here: only the days it feeds wait, every other day goes on.
        # So do the days a quarantined NDVI composite feeds.
        inputs = day_readiness(era5_dir, g.day, settings.region_dir, settings.quarantine_dir,
                               settings.manifest_path)
        row, set_aside = steps.sample_ready_day(
            g, inputs, lambda day: prefect_tasks.update_samples(settings, grid, day, fit), logger)
        rows.append(row)
        meteo_quarantined += set_aside
    quarantined = (pulled.quarantined + covariates_quarantined + [q for g in gridded for q in g.quarantined]
                   + meteo_quarantined)
    for product, why in pulled.failed.items():
        logger.error("could not pull %s: %s", product, why)

    mapped, champion, archive_repairs, unmapped = extend_archive(settings, grid, last, recompute=refreshed, first=first)

    prefect_tasks.publish(steps.run_artifacts(first, last, region, settings.archive_root, pulled, rows, fit, quarantined,
                                              state_findings, archive_repairs, mapped, champion, unmapped,
                                              gosat_refit=gosat_refit))
    if unmapped:
        # After the artifacts, so the operator sees what did work; the state says the run did not.
        raise ArchiveDaysFailed(unmapped)
    return steps.run_result(first, last, pulled, rows, mapped, quarantined, state_findings, archive_repairs,
                            refreshed, fit, gosat_refit=gosat_refit)


def extend_archive(settings: Settings, grid: Grid, last: date, recompute: set[date] | frozenset[date] = frozenset(),
                   first: date | None = None
                   ) -> tuple[list[Row], ChampionModel | None, list[Row], dict[str, str]]:
    """Map every day of the archive look-back missing from the archive whose inputs exist, and
    re-map archived days in `recompute` (their ERA5 was replaced) and the stale days among the
    look-back and the days whose input window reaches into the run's window [first, last] (what
    they were made from changed: tasks/archive/provenance.py); each row says why. Returns (rows, champion or None,
    repairs, {day: why} of days that could not be written): first the look-back's COG + STAC item
    pairs are checked, a lost item written again, an unsound COG quarantined (and so mapped
    again below)."""
    logger = get_run_logger()
    lookback = steps.archive_lookback(last, settings.archive_lookback_days)
    health = check_archive(settings.archive_root, settings.region.name, grid, lookback,
                           settings.quarantine_dir / "archive")
    for repair in health.repairs:
        logger.warning("archive repair: %s: %s -> %s", repair.file, repair.problem, repair.action)
    repairs = health.rows()
    try:
        champion = load_champion(settings.tracking_uri, settings.registered_model_name,
                                 settings.data_dir / "models")
    except ChampionNotFoundError:
        logger.warning("no champion model registered yet: the archive waits for the first retrain")
        return [], None, repairs, {}
    era5_dir = settings.raw("era5")
    archived = set(archived_days(settings.archive_root, settings.region.name))
    # The look-back's days are redone for any change of record; the older days whose window
    # reaches the run's only for their inputs (a new champion or fit alone is `backfill --stale`'s).
    scan = steps.days_to_check_for_staleness(lookback, archived, first or min(lookback), last,
                                             lambda d: mapping_window(settings, champion, d))
    current = current_provenance(settings, champion)
    stale = {**stale_archive_days(settings.archive_root, settings.region.name, set(scan) - set(lookback), current,
                                  inputs_only=True),
             **stale_archive_days(settings.archive_root, settings.region.name, lookback, current)}
    todo = steps.days_to_map(lookback, archived, set(recompute) | set(stale),
                             lambda d: inputs_available(era5_dir, d, settings.quarantine_dir,
                                                        settings.manifest_path,
                                                        region_dir=settings.region_dir))
    why = steps.map_reasons(todo, archived, recompute, stale)
    for day in todo:
        if day in archived:
            logger.info("archive day %s is redone: %s", day, why[day])
    if not todo:
        return [], champion, repairs, {}
    predictor = OnnxPredictor(champion.onnx_path)
    logger.info("champion %s v%s on %s; mapping %d days", champion.name, champion.version, predictor.provider,
                len(todo))
    rows: list[Row] = []
    unmapped: dict[str, str] = {}
    for day in todo:
        # One day that cannot be written (a full disk, a bad input found late) must not keep the
        # other days of the look-back out of the archive; the run still ends Failed for it.
        try:
            rows.append({**prefect_tasks.map_day(settings, grid, day, predictor, champion), "why": why[day]})
        except Exception as exc:  # noqa: BLE001 - reported per day, raised by the flow at its end
            unmapped[day.isoformat()] = f"{type(exc).__name__}: {exc}"
            logger.error("archive day %s not written: %s", day, unmapped[day.isoformat()])
    return rows, champion, repairs, unmapped
