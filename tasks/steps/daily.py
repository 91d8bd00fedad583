"""The daily update's steps (flows/daily.py): its window, which days to grid and to map, the
per-day rows and what the run publishes. Plain functions, tested in tests/test_daily_steps.py."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from tasks.archive import day_cog_path, quicklook_markdown
from tasks.covariates.day import DayReadiness
from tasks.fusion.merge import GosatFit
from tasks.io.integrity import Logger
from tasks.io.quarantine import InputFileError
from tasks.mapping.champion import Champion
from tasks.samples.ingest import DayGridding
from tasks.sources.products import PRODUCTS, SATELLITES
from tasks.sources.pull import PullReport
from tasks.steps.artifacts import Artifact, Row, page, table


def window(lookback_days: int, start: str | None, end: str | None, today: date | None = None) -> tuple[date, date]:
    """[first, last] of a run: `end` (else today, UTC) and `lookback_days` before it unless `start` is given."""
    last = date.fromisoformat(end) if end else (today or datetime.now(timezone.utc).date())
    first = date.fromisoformat(start) if start else last - timedelta(days=lookback_days - 1)
    if first > last:
        raise ValueError(f"start {first} is after end {last}")
    return first, last


def era5_final_window(last: date, final_after_days: int, final_window_days: int) -> tuple[date, date]:
    """Final ERA5 replaces ERA5T months later: the older days [first, last] to look for it on."""
    aged = last - timedelta(days=final_after_days + 1)
    return aged - timedelta(days=final_window_days - 1), aged


def merge_final_era5(pulled: PullReport, final: PullReport) -> PullReport:
    """Fold the ERA5-final pull into the run's pull report (in place; returned for convenience)."""
    pulled.fetched["era5"] = pulled.fetched.get("era5", []) + final.fetched.get("era5", [])
    pulled.replaced["era5"] = pulled.replaced.get("era5", []) + final.replaced.get("era5", [])
    pulled.failed.update({f"era5 final: {k}": v for k, v in final.failed.items()})
    return pulled


def refreshed_days(replaced_era5: Iterable[str]) -> set[date]:
    """Days whose meteorology changed with a replaced ERA5 file: day e's file closes day e-1's sums.
    A name that is not an ERA5 day's (the pull fetches none) refreshes no day."""
    days = (PRODUCTS["era5"].day(name) for name in replaced_era5)
    return {d for e in days if e is not None for d in (e, e - timedelta(days=1))}


def days_to_grid(granules: Mapping[str, Mapping[date, list[Path]]], new_files: set[str], sampled: set[date],
                 refreshed: set[date], first: date, last: date) -> list[date]:
    """Any day in [first, last] with a granule that is new or not yet sampled, and any day whose
    meteorology was replaced (`refreshed`, inside the window or not), sorted."""
    return sorted({d for files_by_day in granules.values() for d, files in files_by_day.items()
                   if (first <= d <= last and (any(f.name in new_files for f in files) or d not in sampled))
                   or d in refreshed})


def new_file_names(pulled: PullReport) -> set[str]:
    return {name for names in pulled.fetched.values() for name in names}


def granules_of_day(granules: Mapping[str, Mapping[date, list[Path]]], day: date) -> dict[str, list[Path]]:
    return {s: list(granules[s].get(day, [])) for s in SATELLITES}


def day_row(gridded: DayGridding, n_samples: int, era5_ready: bool, era5_problem: str | None,
            ndvi_problem: str | None) -> Row:
    """The row of one gridded day in the run's table."""
    return {"day": gridded.day.isoformat(), **{f"{s}_granules": gridded.granules.get(s, 0) for s in SATELLITES},
            **{f"{s}_soundings": gridded.soundings.get(s, 0) for s in SATELLITES},
            "samples": n_samples, "era5": "yes" if era5_ready else "waiting", "era5_problem": era5_problem,
            "ndvi": "waiting" if ndvi_problem else "yes", "ndvi_problem": ndvi_problem,
            "quarantined": len(gridded.quarantined)}


def sample_ready_day(gridded: DayGridding, inputs: DayReadiness, update: Callable[[date], int],
                     logger: Logger) -> tuple[Row, list[Row]]:
    """Sample one gridded day if its inputs are ready:
    (its row, the ERA5 files quarantined on the way). A day waiting for ERA5 or NDVI, or whose
    input turns out bad while sampling (InputFileError from `update`), waits; the others go on."""
    n, ready, problem = 0, inputs.era5.ready, inputs.era5.why
    if ready and inputs.ndvi_problem:
        logger.warning("%s waits: %s", gridded.day, inputs.ndvi_problem)
    elif ready:
        try:
            n = update(gridded.day)
        except InputFileError as exc:
            logger.error("%s waits: %s", gridded.day, exc)
            ready, problem = False, str(exc)
    return day_row(gridded, n, ready, problem, inputs.ndvi_problem), list(inputs.era5.quarantined)


def archive_lookback(last: date, lookback_days: int) -> list[date]:
    return [last - timedelta(days=i) for i in range(lookback_days)]


def days_to_map(lookback: Iterable[date], archived: set[date], recompute: set[date] | frozenset[date],
                available: Callable[[date], bool]) -> list[date]:
    """The look-back's days missing from the archive and the archived days in `recompute` (their
    inputs changed), kept only when their inputs are `available`, sorted."""
    todo = {d for d in lookback if d not in archived} | {d for d in recompute if d in archived}
    return sorted(d for d in todo if available(d))


def days_to_check_for_staleness(lookback: Iterable[date], archived: Iterable[date], first: date, last: date,
                                 window_of: Callable[[date], tuple[date, date]]) -> list[date]:
    """The archived days whose record this run may have made untrue: the look-back's, and every
    archived day whose input window reaches into the run's window [first, last] (its samples and
    ERA5 may have arrived or changed). A field of +-15 days makes a granule delivered 10 days late
    the concern of the 31 days around it, not of the last 3 alone; anything older is
    `xco2 backfill --stale`'s."""
    out = set(lookback)
    for day in archived:
        start, end = window_of(day)
        if start <= last and end >= first:
            out.add(day)
    return sorted(out)


MISSING = "missing from the archive"
ERA5_REPLACED = "its ERA5 was replaced"


def map_reasons(todo: Iterable[date], archived: set[date], recompute: set[date] | frozenset[date],
                stale: Mapping[date, list[str]]) -> dict[date, str]:
    """Why each day of `todo` is (re)mapped: missing, its ERA5 replaced, or what made it stale."""
    out: dict[date, str] = {}
    for day in todo:
        reasons = [] if day in archived else [MISSING]
        reasons += [ERA5_REPLACED] if day in recompute and day in archived else []
        reasons += list(stale.get(day, [])) if day in archived else []
        out[day] = "; ".join(dict.fromkeys(reasons)) or "requested"
    return out


def redone_rows(mapped: list[Row]) -> list[Row]:
    """The archive days of the run that replaced an archived day, with why."""
    return [{"day": r["day"], "why": r.get("why", "")} for r in mapped if r.get("why", MISSING) != MISSING]


def gosat_refit_line(gosat_refit: Mapping[str, Any] | None) -> str:
    if not gosat_refit:
        return "kept"
    return (f"refitted ({gosat_refit['why']}): {gosat_refit['previous_fit_id']} -> {gosat_refit['fit']['fit_id']}, "
            f"{len(gosat_refit['rewritten'])} sample days re-fused")


def archive_state(champion: Champion | None, mapped: list[Row]) -> str:
    if champion is None:
        return "waiting for a first champion (no model version holds alias `champion`): run the monthly retrain"
    if mapped:
        return f"{len(mapped)} days written by {champion.name} v{champion.version}"
    return "nothing to map: the look-back window's days are archived or wait for their inputs"


def _failures_table(failed: Mapping[str, str]) -> Artifact:
    return table("daily-source-failures", [{"product": p, "problem": why} for p, why in failed.items()],
                 "Products that could not be pulled this run")


def nothing_pulled_artifacts(first: date, last: date, region: str, failed: Mapping[str, str], why: str) -> list[Artifact]:
    """A run where every source failed: which products and why, and a FAILED summary."""
    return [_failures_table(failed),
            page("daily-summary", f"# Daily update {first}..{last} ({region}): FAILED\n\n```\n{why}\n```\n")]


def covariates_failed_artifacts(first: date, last: date, region: str, n_fetched: int, set_aside: list[Row],
                                problem: Exception) -> list[Artifact]:
    """A run whose static covariates could not be built: what was set aside and a FAILED summary."""
    out = [table("daily-quarantined", set_aside, "Inputs set aside as unreadable")] if set_aside else []
    return out + [page("daily-summary", (
        f"# Daily update {first}..{last} ({region}): FAILED\n\n"
        f"- new granules: {n_fetched}\n- static covariates could not be built:\n\n```\n{problem}\n```\n"))]


def summary_markdown(first: date, last: date, region: str, pulled: PullReport, rows: list[Row], fit: GosatFit,
                     quarantined: list[Row], state: str, archive_repairs: list[Row], unmapped: Mapping[str, str],
                     redone: list[Row] | None = None, gosat_refit: Mapping[str, Any] | None = None) -> str:
    waiting = [f"{r['day']} ({r['era5_problem']})" if r["era5_problem"] else r["day"]
               for r in rows if r["era5"] == "waiting"]
    waiting_ndvi = [f"{r['day']} ({r['ndvi_problem']})" for r in rows if r["ndvi"] == "waiting"]
    redone_days = "; ".join(f"{r['day']} ({r['why']})" for r in redone or [])
    return (
        f"# Daily update {first}..{last} ({region})\n\n"
        f"- new granules: {pulled.n_fetched} ({', '.join(f'{k}: {len(v)}' for k, v in pulled.fetched.items())})\n"
        f"- days sampled: {sum(1 for r in rows if r['samples'])} of {len(rows)} gridded\n"
        f"- GOSAT->OCO fit {fit.fit_id}: intercept {fit.intercept:.3f} ppm, slope {fit.slope:.4f}, "
        f"{fit.n_collocations} collocated GOSAT soundings ({fit.method})\n"
        f"- GOSAT fit this run: {gosat_refit_line(gosat_refit)}\n"
        f"- quarantined inputs: {len(quarantined)}\n"
        f"- products that failed to pull: {', '.join(pulled.failed) or 'none'}\n"
        f"- days waiting for ERA5: {', '.join(waiting) or 'none'}\n"
        f"- days waiting for NDVI: {', '.join(waiting_ndvi) or 'none'}\n"
        f"- archive: {state}\n"
        f"- archive repairs: {len(archive_repairs) or 'none'}\n"
        f"- archive days redone (what they were made from changed): {redone_days or 'none'}\n"
        f"- archive days that could not be written: {', '.join(sorted(unmapped)) or 'none'}\n")


def run_artifacts(first: date, last: date, region: str, archive_root: Path, pulled: PullReport, rows: list[Row],
                  fit: GosatFit, quarantined: list[Row], state_findings: list[Row], archive_repairs: list[Row],
                  mapped: list[Row], champion: Champion | None, unmapped: Mapping[str, str],
                  gosat_refit: Mapping[str, Any] | None = None) -> list[Artifact]:
    """Everything a finished daily run publishes, in the order it is published (the summary last)."""
    out = [table("daily-days-processed", rows or [{"day": "none new"}], "Days gridded, fused and sampled in this run")]
    if gosat_refit:
        out.append(table("daily-gosat-refit", [
            {"why": gosat_refit["why"], "previous_fit_id": gosat_refit["previous_fit_id"],
             "fit_id": gosat_refit["fit"]["fit_id"], "n_collocations": gosat_refit["fit"]["n_collocations"],
             "sample_days_refused": ", ".join(gosat_refit["rewritten"]) or "none"}],
            "The GOSAT fit was made on data that has since changed: refitted, its samples re-fused"))
    redone = redone_rows(mapped)
    if redone:
        out.append(table("daily-archive-redone", redone, "Archived days mapped again: what they were made from changed"))
    if quarantined:
        out.append(table("daily-quarantined", quarantined, "Inputs set aside as unreadable"))
    if state_findings:
        out.append(table("daily-state-check", state_findings,
                         "Damaged derived state recomputed, dead writers' temp files removed"))
    if archive_repairs:
        out.append(table("daily-archive-repairs", archive_repairs,
                         "Archive days found unsound (COG or STAC item) and repaired"))
    if pulled.failed:
        out.append(_failures_table(pulled.failed))
    state = archive_state(champion, mapped)
    out.append(table("daily-archive-days", mapped or [{"day": "none", "why": state}], "Archive days written in this run"))
    if unmapped:
        out.append(table("daily-archive-failures", [{"day": d, "problem": why} for d, why in sorted(unmapped.items())],
                         "Archive days that could not be written"))
    if champion is not None:
        out.append(table("daily-model",
                         [{"metric": "model", "value": f"{champion.name} v{champion.version} (@champion)"}]
                         + [{"metric": k, "value": round(float(v), 4)} for k, v in sorted(champion.metrics.items())],
                         "The champion that mapped this run's days"))
    if mapped:
        latest = max(date.fromisoformat(r["day"]) for r in mapped)
        out.append(page("daily-quicklook", quicklook_markdown(day_cog_path(archive_root, region, latest),
                                                               f"XCO2 {region} {latest}"), f"Quicklook of {latest}"))
    out.append(page("daily-summary", summary_markdown(first, last, region, pulled, rows, fit, quarantined, state,
                                                      archive_repairs, unmapped, redone, gosat_refit)))
    return out


def run_result(first: date, last: date, pulled: PullReport, rows: list[Row], mapped: list[Row],
               quarantined: list[Row], state_findings: list[Row], archive_repairs: list[Row],
               refreshed: set[date], fit: GosatFit, gosat_refit: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What daily_update returns."""
    return {"window": [first.isoformat(), last.isoformat()], "days": rows, "archive_days": mapped,
            "quarantined": quarantined, "state_findings": state_findings, "archive_repairs": archive_repairs,
            "source_failures": pulled.failed, "recomputed_days": sorted(d.isoformat() for d in refreshed),
            "gosat_fit": fit.to_dict(), "gosat_refit": dict(gosat_refit) if gosat_refit else None,
            "redone_days": redone_rows(mapped), "new_granules": pulled.n_fetched}


class ArchiveDaysFailed(RuntimeError):
    """Some archive days of the run could not be written; the message names each day and why."""

    def __init__(self, unmapped: dict[str, str]) -> None:
        self.unmapped = unmapped
        super().__init__(f"{len(unmapped)} archive days could not be written: "
                         + "; ".join(f"{d}: {why}" for d, why in sorted(unmapped.items())))
