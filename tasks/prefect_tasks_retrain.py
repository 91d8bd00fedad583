"""The Prefect task wrappers of the monthly retrain (flows/retrain.py): thin tasks over
tasks/steps/retrain.py (and the comparison of tasks/steps/retrain_results.py). Kept apart from
tasks/prefect_tasks.py because these train with torch, which the nightly mapping path never
imports (import-linter contract `nightly-without-torch`). The retrain's GOSAT refit and state
check are the nightly module's tasks.
"""

from __future__ import annotations

from typing import Any, Callable, ParamSpec, TypeVar

import numpy as np
import pandas as pd
from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from models.background import Background
from models.holdouts import FieldFit, Holdouts
from models.training import TrainedModel
from tasks.settings import Settings
from tasks.steps import retrain as steps, retrain_results
from tasks.steps.retrain_results import ModelComparison

P = ParamSpec("P")
R = TypeVar("R")


def unit(**options: Any) -> Callable[[Callable[P, R]], Task[P, R]]:
    """Prefect's `task` with caching off: inputs are large arrays and settings objects, never
    hashed. The nightly wrappers' own (tasks/prefect_tasks.py::unit), repeated: this room and that
    one may not import each other (import-linter contract `tasks-layers`)."""
    return task(cache_policy=NO_CACHE, **options)


@unit(name="load-samples", retries=2, retry_delay_seconds=5)
def load_training_data(settings: Settings) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    return steps.training_data(settings.region_dir)


@unit(name="fit-background")
def fit_the_background(X: np.ndarray, y: np.ndarray, weight: np.ndarray, split: Holdouts) -> Background:
    return steps.background_on_training(X, y, weight, split)


@unit(name="train-resnet-lstm")
def train(settings: Settings, X: np.ndarray, y: np.ndarray, weight: np.ndarray, split: Holdouts,
          background: Background) -> TrainedModel:
    return steps.train_anomaly_network(settings, X, y, weight, split, background)


@unit(name="fit-daily-anomaly-field")
def fit_daily_field(settings: Settings, trained: TrainedModel, X: np.ndarray, y: np.ndarray, df: pd.DataFrame,
                    split: Holdouts) -> tuple[TrainedModel, FieldFit | None]:
    return steps.fit_daily_field(settings, trained, X, y, df, split)


@unit(name="refit-background-for-maps")
def background_for_maps(trained: TrainedModel, field_fit: FieldFit | None, X: np.ndarray, y: np.ndarray,
                        df: pd.DataFrame, split: Holdouts) -> tuple[TrainedModel, FieldFit | None]:
    return steps.background_for_maps(trained, field_fit, X, y, df, split)


@unit(name="calibrate-uncertainty")
def calibrate_uncertainty(settings: Settings, trained: TrainedModel, X: np.ndarray, y: np.ndarray,
                          split: Holdouts) -> TrainedModel:
    return steps.calibrate_uncertainty(settings, trained, X, y, split)


@unit(name="compare-models")
def compare_models(settings: Settings, X: np.ndarray, y: np.ndarray, df: pd.DataFrame,
                   truth: Callable[[np.ndarray, np.ndarray | None], Any] | None = None) -> ModelComparison:
    """Baselines and protocols on identical features and splits (issue 4)."""
    return retrain_results.compare_models(settings, X, y, df, truth)
