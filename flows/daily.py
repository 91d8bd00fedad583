"""The daily update: pull new inputs, grid, fuse, update samples, extend the archive."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from registry.champion import ChampionNotFoundError, load_champion
from models.onnx_runtime import OnnxPredictor
from tasks import samples, units
from tasks.archive import archived_days, day_cog_path, quicklook_markdown
from tasks.archive.health import check_archive
from tasks.grid import Grid
from tasks.covariates import CovariateError
from tasks.inference import day_readiness, inputs_available
from tasks.quarantine import InputFileError
from tasks.settings import SourceMode, load_settings
from tasks.sources import raw_granules
from tasks.sources.pull import CDS_SERVICE, EverySourceFailed, every_source_failed, raw_dir
from tasks.sources.products import PRODUCTS, SATELLITES


def _window(settings, start: str | None, end: str | None) -> tuple[date, date]:
    last = date.fromisoformat(end) if end else datetime.now(timezone.utc).date()
    first = date.fromisoformat(start) if start else last - timedelta(days=settings.ingest_lookback_days - 1)
    if first > last:
        raise ValueError(f"start {first} is after end {last}")
    return first, last


@flow(name="xco2-daily-update", log_prints=True)
def daily_update(start: str | None = None, end: str | None = None, overrides: dict | None = None) -> dict:
    """Bring inputs, samples and the archive up to date for the days in [start, end]."""
    logger = get_run_logger()
    settings = load_settings(**(overrides or {}))
    grid = Grid.for_region(settings.region, settings.grid_step)
    first, last = _window(settings, start, end)
    logger.info("region %s (%d x %d cells), days %s..%s, source %s",
                settings.region.name, grid.nx, grid.ny, first, last, settings.source.value)
    # Before anything reads the store: damaged derived files are recomputed, dead writers' temp files go.
    state_findings = units.check_state(settings, grid)

    pulled = units.pull_inputs(settings, first, last + timedelta(days=1))
    nothing_pulled = every_source_failed(pulled)
    if nothing_pulled:
        # Nothing new can come in, and the later steps would fail on the same cause with a vaguer
        # message (no covariates, no samples): say why, then end Failed so that neither the exit
        # code nor Prefect calls this a success. The next run starts from where this one stopped.
        logger.error("%s", nothing_pulled)
        create_table_artifact(key="daily-source-failures", description="Products that could not be pulled this run",
                              table=[{"product": p, "problem": why} for p, why in pulled.failed.items()])
        create_markdown_artifact(key="daily-summary", markdown=(
            f"# Daily update {first}..{last} ({settings.region.name}): FAILED\n\n```\n{nothing_pulled}\n```\n"))
        raise EverySourceFailed(nothing_pulled)
    # A CDS given up on this run is not asked for final ERA5 either.
    if settings.source == SourceMode.earthdata and CDS_SERVICE not in pulled.unreachable:
        # Final ERA5 replaces ERA5T months later: look for it over a window of older days.
        aged = last - timedelta(days=settings.era5_final_after_days + 1)
        final = units.pull_inputs(settings, aged - timedelta(days=settings.era5_final_window_days - 1), aged,
                                  products=("era5",))
        pulled.fetched["era5"] += final.fetched.get("era5", [])
        pulled.replaced["era5"] = pulled.replaced.get("era5", []) + final.replaced.get("era5", [])
        pulled.failed.update({f"era5 final: {k}": v for k, v in final.failed.items()})
    try:
        # A bad NDVI composite is quarantined here and holds back only its days (below).
        covariates_quarantined = units.build_static_covariates(settings, grid, set_aside=pulled.quarantined)
    except CovariateError as exc:
        # A bad static layer feeds every day: nothing can be sampled or mapped. Say which file and
        # why as the run's last word, after artifacts that show what the pull did.
        logger.error("%s", exc)
        set_aside = pulled.quarantined + getattr(exc, "quarantined", [])
        if set_aside:
            create_table_artifact(key="daily-quarantined", table=set_aside,
                                  description="Inputs set aside as unreadable")
        create_markdown_artifact(key="daily-summary", markdown=(
            f"# Daily update {first}..{last} ({settings.region.name}): FAILED\n\n"
            f"- new granules: {pulled.n_fetched}\n- static covariates could not be built:\n\n```\n{exc}\n```\n"))
        raise

    # Days to (re)grid: any day in the window with a granule that is new or not yet sampled, and
    # any day whose meteorology was replaced (ERA5T -> final: day e's file closes day e-1's sums).
    granules = {s: raw_granules(settings, s) for s in SATELLITES}
    new_files = {name for names in pulled.fetched.values() for name in names}
    sampled = set(samples.stored_days(settings.region_dir))
    refreshed = {d for name in pulled.replaced.get("era5", []) for e in [PRODUCTS["era5"].day(name)]
                 for d in (e, e - timedelta(days=1))}
    days = sorted({d for s in SATELLITES for d, files in granules[s].items()
                   if (first <= d <= last and (any(f.name in new_files for f in files) or d not in sampled))
                   or d in refreshed})
    gridded = [units.grid_day(settings, grid, d, {s: granules[s].get(d, []) for s in SATELLITES}) for d in days]
    # The fit stays as the last retrain stored it (fitted here only when none is stored yet), so
    # every sample day carries the same fit_id; the retrain refits it and re-fuses the store.
    fit = units.current_gosat_fit(settings)

    era5_dir = raw_dir(settings, "era5")
    rows, meteo_quarantined = [], []
    for g in gridded:
        # A bad ERA5 file is quarantined here: only the days it feeds wait, every other day goes on.
        # So do the days a quarantined NDVI composite feeds.
        inputs = day_readiness(era5_dir, g.day, settings.region_dir, settings.quarantine_dir,
                               settings.raw_dir / "manifest.parquet")
        meteo = inputs.era5
        meteo_quarantined += meteo.quarantined
        n, ready, problem = 0, meteo.ready, meteo.why
        if ready and inputs.ndvi_problem:
            logger.warning("%s waits: %s", g.day, inputs.ndvi_problem)
        elif ready:
            try:
                n = units.update_samples(settings, grid, g.day, fit)
            except InputFileError as exc:
                logger.error("%s waits: %s", g.day, exc)
                ready, problem = False, str(exc)
        rows.append({"day": g.day.isoformat(), **{f"{s}_granules": g.granules.get(s, 0) for s in SATELLITES},
                     **{f"{s}_soundings": g.soundings.get(s, 0) for s in SATELLITES},
                     "samples": n, "era5": "yes" if ready else "waiting", "era5_problem": problem,
                     "ndvi": "waiting" if inputs.ndvi_problem else "yes", "ndvi_problem": inputs.ndvi_problem,
                     "quarantined": len(g.quarantined)})
    quarantined = (pulled.quarantined + covariates_quarantined + [q for g in gridded for q in g.quarantined]
                   + meteo_quarantined)
    for product, why in pulled.failed.items():
        logger.error("could not pull %s: %s", product, why)

    mapped, champion, archive_repairs, unmapped = extend_archive(settings, grid, last, recompute=refreshed)

    create_table_artifact(key="daily-days-processed", table=rows or [{"day": "none new"}],
                          description="Days gridded, fused and sampled in this run")
    if quarantined:
        create_table_artifact(key="daily-quarantined", table=quarantined, description="Inputs set aside as unreadable")
    if state_findings:
        create_table_artifact(key="daily-state-check", table=state_findings,
                              description="Damaged derived state recomputed, dead writers' temp files removed")
    if archive_repairs:
        create_table_artifact(key="daily-archive-repairs", table=archive_repairs,
                              description="Archive days found unsound (COG or STAC item) and repaired")
    if pulled.failed:
        create_table_artifact(key="daily-source-failures", description="Products that could not be pulled this run",
                              table=[{"product": p, "problem": why} for p, why in pulled.failed.items()])
    waiting = [f"{r['day']} ({r['era5_problem']})" if r["era5_problem"] else r["day"]
               for r in rows if r["era5"] == "waiting"]
    waiting_ndvi = [f"{r['day']} ({r['ndvi_problem']})" for r in rows if r["ndvi"] == "waiting"]
    if champion is None:
        archive_state = "waiting for a first champion (no model version holds alias `champion`): run the monthly retrain"
    elif mapped:
        archive_state = f"{len(mapped)} days written by {champion.name} v{champion.version}"
    else:
        archive_state = "nothing to map: the look-back window's days are archived or wait for their inputs"
    create_table_artifact(key="daily-archive-days", table=mapped or [{"day": "none", "why": archive_state}],
                          description="Archive days written in this run")
    if unmapped:
        create_table_artifact(key="daily-archive-failures", description="Archive days that could not be written",
                              table=[{"day": d, "problem": why} for d, why in sorted(unmapped.items())])
    if champion is not None:
        create_table_artifact(key="daily-model", description="The champion that mapped this run's days",
                              table=[{"metric": "model", "value": f"{champion.name} v{champion.version} (@champion)"}]
                              + [{"metric": k, "value": round(float(v), 4)} for k, v in sorted(champion.metrics.items())])
    if mapped:
        latest = max(date.fromisoformat(r["day"]) for r in mapped)
        create_markdown_artifact(key="daily-quicklook", description=f"Quicklook of {latest}",
                                 markdown=quicklook_markdown(day_cog_path(settings.archive_root, settings.region.name,
                                                                          latest), f"XCO2 {settings.region.name} {latest}"))
    create_markdown_artifact(key="daily-summary", markdown=(
        f"# Daily update {first}..{last} ({settings.region.name})\n\n"
        f"- new granules: {pulled.n_fetched} ({', '.join(f'{k}: {len(v)}' for k, v in pulled.fetched.items())})\n"
        f"- days sampled: {sum(1 for r in rows if r['samples'])} of {len(rows)} gridded\n"
        f"- GOSAT->OCO fit {fit.fit_id}: intercept {fit.intercept:.3f} ppm, slope {fit.slope:.4f}, "
        f"{fit.n_collocations} collocated GOSAT soundings ({fit.method})\n"
        f"- quarantined inputs: {len(quarantined)}\n"
        f"- products that failed to pull: {', '.join(pulled.failed) or 'none'}\n"
        f"- days waiting for ERA5: {', '.join(waiting) or 'none'}\n"
        f"- days waiting for NDVI: {', '.join(waiting_ndvi) or 'none'}\n"
        f"- archive: {archive_state}\n"
        f"- archive repairs: {len(archive_repairs) or 'none'}\n"
        f"- archive days that could not be written: {', '.join(sorted(unmapped)) or 'none'}\n"))
    if unmapped:
        # After the artifacts, so the operator sees what did work; the state says the run did not.
        raise ArchiveDaysFailed(unmapped)
    return {"window": [first.isoformat(), last.isoformat()], "days": rows, "archive_days": mapped,
            "quarantined": quarantined, "state_findings": state_findings, "archive_repairs": archive_repairs,
            "source_failures": pulled.failed,
            "recomputed_days": sorted(
                d.isoformat() for d in refreshed), "gosat_fit": fit.to_dict(), "new_granules": pulled.n_fetched}


def extend_archive(settings, grid: Grid, last: date, recompute: set[date] = frozenset()):
    """Map every day of the archive look-back missing from the archive whose inputs exist, and
    re-map archived days in `recompute` (their inputs changed). Returns (rows, champion or None,
    repairs, {day: why} of days that could not be written): first the look-back's COG + STAC item
    pairs are checked, a lost item written again, an unsound COG quarantined (and so mapped
    again below)."""
    logger = get_run_logger()
    lookback = [last - timedelta(days=i) for i in range(settings.archive_lookback_days)]
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
    have = set(archived_days(settings.archive_root, settings.region.name))
    era5_dir = raw_dir(settings, "era5")
    todo = [last - timedelta(days=i) for i in range(settings.archive_lookback_days)]
    todo = {d for d in todo if d not in have} | {d for d in recompute if d in have}
    todo = sorted(d for d in todo if inputs_available(era5_dir, d, settings.quarantine_dir,
                                                      settings.raw_dir / "manifest.parquet",
                                                      region_dir=settings.region_dir))
    if not todo:
        return [], champion, repairs, {}
    predictor = OnnxPredictor(champion.onnx_path)
    logger.info("champion %s v%s on %s; mapping %d days", champion.name, champion.version, predictor.provider,
                len(todo))
    rows, unmapped = [], {}
    for day in todo:
        # One day that cannot be written (a full disk, a bad input found late) must not keep the
        # other days of the look-back out of the archive; the run still ends Failed for it.
        try:
            rows.append(units.map_day(settings, grid, day, predictor, champion))
        except Exception as exc:  # noqa: BLE001 - reported per day, raised by the flow at its end
            unmapped[day.isoformat()] = f"{type(exc).__name__}: {exc}"
            logger.error("archive day %s not written: %s", day, unmapped[day.isoformat()])
    return rows, champion, repairs, unmapped


class ArchiveDaysFailed(RuntimeError):
    """Some archive days of the run could not be written; the message names each day and why."""

    def __init__(self, unmapped: dict[str, str]) -> None:
        self.unmapped = unmapped
        super().__init__(f"{len(unmapped)} archive days could not be written: "
                         + "; ".join(f"{d}: {why}" for d, why in sorted(unmapped.items())))
