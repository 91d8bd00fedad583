"""Progress for long work: a rich bar on the terminal and, inside a flow run, a Prefect progress artifact;
and a stopwatch of named steps (the demo's and the real benchmark's timings)."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Callable, Iterator, cast
from uuid import UUID

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

log = logging.getLogger(__name__)


def _prefect_progress(description: str) -> Callable[[float], object] | None:
    """(update, close) for a Prefect progress artifact when a run context exists, else None."""
    try:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact
        from prefect.context import FlowRunContext, TaskRunContext

        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return None
        # Prefect types its sync-or-async functions as `UUID | Coroutine`; called outside an event loop,
        # as here, they return the UUID.
        artifact_id = cast(UUID, create_progress_artifact(progress=0.0, description=description))
        return lambda pct: update_progress_artifact(artifact_id=artifact_id, progress=pct)
    except Exception:  # noqa: BLE001 - progress must never break the work it reports on
        log.debug("no Prefect progress artifact for %s", description, exc_info=True)
        return None


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yields `advance_to(done)`; the Prefect artifact is updated at most every 5 percent."""
    prefect_update = _prefect_progress(description)
    last_pct = [-100.0]
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), transient=False,
    ) as bar:
        task_id = bar.add_task(description, total=total)

        def advance_to(done: int) -> None:
            bar.update(task_id, completed=done)
            pct = 100.0 * done / max(total, 1)
            if prefect_update and (pct - last_pct[0] >= 5 or done >= total):
                last_pct[0] = pct
                try:
                    prefect_update(pct)
                except Exception:  # noqa: BLE001
                    log.debug("progress artifact update failed", exc_info=True)

        yield advance_to


class Stopwatch(dict):
    """Seconds (one decimal) of named steps: `with watch.step("retrain_s"): ...`; a dict of them."""

    def __init__(self) -> None:
        super().__init__()
        self.started = time.perf_counter()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(time.perf_counter() - t, 1)

    def total(self, name: str = "total_s") -> None:
        """Record the time since the stopwatch was made under `name`."""
        self[name] = round(time.perf_counter() - self.started, 1)
