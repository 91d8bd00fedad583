"""What a flow run publishes (Prefect artifacts), built as plain data so it can be tested without
Prefect; `tasks/prefect_tasks.py::publish` hands them to Prefect."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# One row of a run's table: column -> value (str, number, None), as Prefect's table artifacts take it.
Row = dict[str, Any]


@dataclass(frozen=True)
class Artifact:
    """One artifact under a stable key: a table (list of rows) or a Markdown page."""

    key: str
    description: str | None = None
    table: list[Row] | None = None
    markdown: str | None = None

    def __post_init__(self) -> None:
        if (self.table is None) == (self.markdown is None):
            raise ValueError(f"artifact {self.key}: give a table or a markdown page, not both or neither")


def table(key: str, rows: list[Row], description: str | None = None) -> Artifact:
    return Artifact(key=key, description=description, table=rows)


def page(key: str, markdown: str, description: str | None = None) -> Artifact:
    return Artifact(key=key, description=description, markdown=markdown)
