"""The champion as the mapping reads it.

registry/champion.py::ChampionModel is the one the flows load and hand down; tasks/ never imports
registry/ (the layers, docs/architecture.md), so what a day's mapping reads of it is declared here
and the registry's frozen dataclass satisfies it by shape.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any, Protocol


class Champion(Protocol):
    """A registered model version holding the `champion` alias, ready to map days."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def onnx_path(self) -> Path: ...

    @property
    def metrics(self) -> dict[str, float]:
        """Its source run's final metric values (val_rmse, val_r2, ...)."""
        ...

    @property
    def train_last_day(self) -> date | None:
        """The last day of its training samples, when recorded: later days may be anchored."""
        ...

    @property
    def mapping(self) -> dict[str, Any] | None:
        """How maps are made from its graph (background, daily-anomaly field); None before the background."""
        ...
