"""The backfill's steps (flows/backfill.py): its window, the days it maps, what it publishes and
returns. Plain functions, tested in tests/test_backfill_steps.py."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import date, timedelta

from tasks.settings import Settings
from tasks.steps.artifacts import Artifact, Row, table

PROGRESS_KEY = "backfill-progress"
DAYS_KEY = "backfill-days"


def window_days(start: str, end: str) -> list[date]:
    """Every day of [start, end]."""
    first, last = date.fromisoformat(start), date.fromisoformat(end)
    if first > last:
        raise ValueError(f"start {first} is after end {last}")
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def absolute(settings: Settings) -> Settings:
    """The settings with absolute data and archive paths: workers may run in another working
    directory (or on another machine sharing the data)."""
    return settings.model_copy(update={"data_dir": settings.data_dir.resolve(),
                                       "archive_dir": settings.archive_root.resolve()})


UNSOUND = "found unsound by the archive check"


def stale_candidates(stale: Iterable[date], to_remap: Iterable[date]) -> list[date]:
    """The days a `stale_only` backfill recomputes: stale (tasks/archive/provenance.py), or found unsound."""
    return sorted(set(stale) | set(to_remap))


def stale_window(start: str | None, end: str | None, archived: list[date]) -> list[date]:
    """Every day of [start, end]; a bound left out is the archive's first (last) day. Empty when
    the archive is and a bound is left out."""
    if start and end:
        return window_days(start, end)
    if not archived:
        return []
    return window_days(start or archived[0].isoformat(), end or archived[-1].isoformat())


def reasons_for(candidates: Iterable[date], stale: Mapping[date, list[str]], to_remap: Iterable[date]) -> dict[str, str]:
    """{ISO day: why} of a stale-only backfill's days: what made each stale, or unsound."""
    unsound = set(to_remap)
    return {d.isoformat(): "; ".join(list(stale.get(d, [])) + ([UNSOUND] if d in unsound else [])) or "requested"
            for d in candidates}


def split_by_inputs(candidates: list[date], available: Callable[[date], bool]) -> tuple[list[date], list[str]]:
    """(days to map, ISO days skipped for want of inputs), in the candidates' order."""
    todo = [d for d in candidates if available(d)]
    return todo, [d.isoformat() for d in candidates if d not in todo]


def run_artifacts(window: list[date], state_findings: list[Row], repairs: list[Row], rows: list[Row],
                  why: Mapping[str, str] | None = None) -> list[Artifact]:
    """What a finished backfill publishes (the progress artifact aside, which follows the days);
    `why`: {ISO day: why it was redone} of a stale-only backfill."""
    out = []
    if state_findings:
        out.append(table("backfill-state-check", state_findings,
                         "Damaged derived state recomputed, dead writers' temp files removed"))
    if repairs:
        out.append(table("backfill-archive-repairs", repairs, "Archive days found unsound (COG or STAC item) and repaired"))
    out.append(table(DAYS_KEY, [{"day": r["day"], "path": r["path"], "mean_ppm": r["mean_ppm"],
                                 "model_version": r["model_version"],
                                 **({"why": why.get(r["day"], "")} if why is not None else {})}
                                for r in rows] or [{"day": "none"}],
                     f"Archive days written by the backfill {window[0]}..{window[-1]}"))
    return out


def failure_message(failed: Mapping[str, str], n_todo: int) -> str:
    return (f"backfill failed for {len(failed)} of {n_todo} days: "
            + "; ".join(f"{d}: {why}" for d, why in sorted(failed.items())))


def with_model(rows: list[Row], name: str, version: int | str) -> list[Row]:
    """The rows of the worker processes, each naming the model that mapped it."""
    return [{**r, "model_name": name, "model_version": str(version)} for r in rows]
