"""Random Forest and XGBoost baselines (the paper's Fig. 7) and the registry of comparable models.

The paper compares its ResNet-LSTM with a Random Forest and XGBoost "as strong baselines" and
gives no hyperparameters, i.e. library defaults. The defaults are written out here, so the logged
params are the ones used and do not drift with library versions:

- Random Forest (scikit-learn): 200 trees (scikit-learn's default is 100; 200 lowers the variance
  of the forest at twice the cost), otherwise the defaults: squared error, all features at every
  split (max_features=1.0, i.e. bagged trees), fully grown trees (min_samples_leaf=1), bootstrap
  samples as large as the training set. Fully grown trees memorise: memory grows with the number
  of training samples (about 100 MB per tree per million samples), so cap them with
  `Budget.max_train_samples` on large stores.
- XGBoost: the library's defaults: 100 rounds, learning rate 0.3, depth 6, no subsampling,
  lambda 1, histogram trees with 256 bins, squared error. No early stopping (the defaults have
  none), so it does not use the validation set.

All predictors take raw covariates and return XCO2 in ppm (float64). Trees need no scaling.
Seeded: the same seed gives the same trees; with n_jobs > 1 the forest sums its trees in thread
order, so predictions agree to ~1e-13 ppm rather than bit for bit.

`MODELS` maps a name to a `ModelSpec` whose `fit` has one signature for all models:
`fit(X_train, y_train, X_val, y_val, feature_names, seed, budget) -> predictor` (predictor.predict
(X) -> ppm). Only the ResNet-LSTM uses the validation set (early stopping and the learning-rate
schedule); the others ignore it, so every model trains on exactly the same rows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # models.training imports torch, which only the ResNet-LSTM's fit may load
    from models.training import TrainedModel, TrainingConfig

__all__ = [
    "MODELS",
    "BaselineModel",
    "Budget",
    "ModelSpec",
    "Predictor",
    "cap_rows",
    "fit_random_forest",
    "fit_xgboost",
    "get_model",
]


class Predictor(Protocol):
    def predict(self, X: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Budget:
    """How much compute a comparison may spend; shared by every model and protocol.

    Sample caps apply per fold and identically to all models (seeded random subsets):
    `max_train_samples` and `max_val_samples` cap the rows a model is fitted on and the
    ResNet-LSTM's validation rows; `max_test_samples` caps the held-out rows scored per fold
    (None: all). `validation_fraction` is the share of each training fold set aside (as whole
    blocks/days under the block protocols) as the ResNet-LSTM's validation set.
    The ResNet-LSTM's recipe is the paper's Table 5 (TrainingConfig) except `max_epochs`,
    `batch_size`, the patiences and `device`. `n_jobs` threads for the tree models (-1: all
    cores). `feature_set_version` is recorded with ResNet-LSTM models."""

    max_epochs: int = 200
    max_train_samples: int | None = None
    max_val_samples: int | None = None
    max_test_samples: int | None = None
    validation_fraction: float = 0.1
    batch_size: int = 1024
    early_stopping_patience: int = 10
    lr_patience: int = 5
    device: str = "auto"
    rf_n_estimators: int = 200
    xgb_n_estimators: int = 100
    n_jobs: int = -1
    feature_set_version: str = "unversioned"

    def __post_init__(self) -> None:
        problems = []
        for name in ("max_train_samples", "max_val_samples", "max_test_samples"):
            value = getattr(self, name)
            if value is not None and value < 2:
                problems.append(f"{name} must be None or >= 2, got {value}")
        for name in ("max_epochs", "early_stopping_patience", "rf_n_estimators",
                     "xgb_n_estimators"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            problems.append(f"batch_size must be >= 2, got {self.batch_size}")
        if self.lr_patience < 0:
            problems.append(f"lr_patience must be >= 0, got {self.lr_patience}")
        if not 0 < self.validation_fraction < 1:
            problems.append(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if self.n_jobs == 0:
            problems.append("n_jobs must be -1 (all cores) or >= 1, got 0")
        if problems:
            raise ValueError("invalid Budget: " + "; ".join(problems))

    @classmethod
    def smoke(cls, **overrides: Any) -> Budget:
        """Seconds per fold on a laptop CPU: for tests and wiring checks, not for numbers."""
        values = dict(max_epochs=1, max_train_samples=500, max_val_samples=500, batch_size=256,
                      early_stopping_patience=1, rf_n_estimators=50, xgb_n_estimators=50)
        return cls(**{**values, **overrides})

    @classmethod
    def cpu(cls, **overrides: Any) -> Budget:
        """Minutes per fold on 2 CPU cores (see models/comparison.py for the arithmetic)."""
        values = dict(max_epochs=20, max_train_samples=20_000, max_val_samples=5_000,
                      max_test_samples=100_000, early_stopping_patience=5, lr_patience=3)
        return cls(**{**values, **overrides})

    def to_params(self) -> dict[str, Any]:
        return asdict(self)

    def training_config(self, seed: int) -> TrainingConfig:
        """The ResNet-LSTM's TrainingConfig under this budget (Table 5 otherwise)."""
        from models.training import TrainingConfig

        return TrainingConfig(
            max_epochs=self.max_epochs, batch_size=self.batch_size,
            early_stopping_patience=self.early_stopping_patience, lr_patience=self.lr_patience,
            seed=int(seed), device=self.device,
        )


def _threads(n_jobs: int | None) -> int:
    if n_jobs is None or n_jobs < 0:
        return max(os.cpu_count() or 1, 1)
    if n_jobs == 0:
        raise ValueError("n_jobs must be -1 (all cores) or >= 1")
    return int(n_jobs)


def cap_rows(n: int, limit: int | None, seed: int, salt: int = 0) -> np.ndarray:
    """Sorted indices of a seeded random subset of at most `limit` of n rows (all when None)."""
    if limit is None or n <= limit:
        return np.arange(n)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(salt)])
    return np.sort(rng.choice(n, int(limit), replace=False))


def _check_xy(X: npt.ArrayLike, y: npt.ArrayLike, feature_names: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be [n, n_features], got shape {X.shape}")
    if y.shape != (X.shape[0],):
        raise ValueError(f"y must have shape [{X.shape[0]}], got {y.shape}")
    if X.shape[0] < 2:
        raise ValueError(f"need at least 2 training samples, got {X.shape[0]}")
    if feature_names is not None and len(feature_names) != X.shape[1]:
        raise ValueError(f"{len(feature_names)} feature names for {X.shape[1]} columns")
    if not np.isfinite(X).all():
        raise ValueError(f"X holds {int((~np.isfinite(X)).sum())} non-finite values")
    if not np.isfinite(y).all():
        raise ValueError(f"y holds {int((~np.isfinite(y)).sum())} non-finite values")
    return X, y


@dataclass
class BaselineModel:
    """A fitted tree model: raw covariates -> XCO2 ppm."""

    name: str
    estimator: Any
    feature_names: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)
    n_train: int = 0
    fit_seconds: float = 0.0

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def predict(self, X: npt.ArrayLike) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(
                f"{self.name}: expected features of shape [n, {self.n_features}], got {X.shape}"
            )
        if X.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        return np.asarray(self.estimator.predict(X), dtype=np.float64)


def _names(feature_names: Sequence[str] | None, n: int) -> tuple[str, ...]:
    return tuple(str(f) for f in feature_names) if feature_names is not None else tuple(
        f"x{i}" for i in range(n))


def fit_random_forest(
    X: npt.ArrayLike, y: npt.ArrayLike, seed: int, n_estimators: int = 200, n_jobs: int = -1,
    feature_names: Sequence[str] | None = None, **overrides: Any,
) -> BaselineModel:
    """scikit-learn RandomForestRegressor with its defaults (see the module doc), seeded."""
    from sklearn.ensemble import RandomForestRegressor

    X, y = _check_xy(X, y, feature_names)
    params = dict(n_estimators=int(n_estimators), criterion="squared_error", max_depth=None,
                  min_samples_split=2, min_samples_leaf=1, max_features=1.0, bootstrap=True,
                  max_samples=None)
    params.update(overrides)
    estimator = RandomForestRegressor(**params, random_state=int(seed), n_jobs=_threads(n_jobs))
    started = time.perf_counter()
    estimator.fit(X, y)
    return BaselineModel("random_forest", estimator, _names(feature_names, X.shape[1]),
                         {**params, "seed": int(seed)}, X.shape[0],
                         time.perf_counter() - started)


def fit_xgboost(
    X: npt.ArrayLike, y: npt.ArrayLike, seed: int, n_estimators: int = 100, n_jobs: int = -1,
    feature_names: Sequence[str] | None = None, **overrides: Any,
) -> BaselineModel:
    """xgboost XGBRegressor with its defaults written out (see the module doc), seeded."""
    from xgboost import XGBRegressor

    X, y = _check_xy(X, y, feature_names)
    params = dict(n_estimators=int(n_estimators), learning_rate=0.3, max_depth=6,
                  min_child_weight=1.0, subsample=1.0, colsample_bytree=1.0, reg_lambda=1.0,
                  reg_alpha=0.0, gamma=0.0, tree_method="hist", max_bin=256,
                  objective="reg:squarederror")
    params.update(overrides)
    estimator = XGBRegressor(**params, random_state=int(seed), n_jobs=_threads(n_jobs),
                             device="cpu", verbosity=0)
    started = time.perf_counter()
    estimator.fit(X, y)
    return BaselineModel("xgboost", estimator, _names(feature_names, X.shape[1]),
                         {**params, "seed": int(seed)}, X.shape[0],
                         time.perf_counter() - started)


# --------------------------------------------------------------------------------------------
# The registry: one fit signature for every model

FitFunction = Callable[
    [np.ndarray, np.ndarray, np.ndarray, np.ndarray, Sequence[str], int, Budget], Predictor
]


@dataclass(frozen=True)
class ModelSpec:
    """A comparable model: `fit(X_train, y_train, X_val, y_val, feature_names, seed, budget)`.

    `fit` applies the budget's sample caps itself (cap_rows, the same subsets for every model),
    so calling it directly or through models.comparison trains on the same rows."""

    name: str
    label: str
    fit: FitFunction
    uses_validation: bool
    params: Callable[[Budget], dict[str, Any]]


def _capped(X: np.ndarray, y: np.ndarray, limit: int | None, seed: int,
            salt: int) -> tuple[np.ndarray, np.ndarray]:
    keep = cap_rows(len(y), limit, seed, salt)
    return (X, y) if len(keep) == len(y) else (X[keep], y[keep])


def _fit_rf(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
            feature_names: Sequence[str], seed: int, budget: Budget) -> BaselineModel:
    X_train, y_train = _capped(X_train, y_train, budget.max_train_samples, seed, 1)
    return fit_random_forest(X_train, y_train, seed, budget.rf_n_estimators, budget.n_jobs,
                             feature_names)


def _fit_xgb(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
             feature_names: Sequence[str], seed: int, budget: Budget) -> BaselineModel:
    X_train, y_train = _capped(X_train, y_train, budget.max_train_samples, seed, 1)
    return fit_xgboost(X_train, y_train, seed, budget.xgb_n_estimators, budget.n_jobs,
                       feature_names)


def _fit_resnet_lstm(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
                     feature_names: Sequence[str], seed: int, budget: Budget) -> TrainedModel:
    from models.training import train_resnet_lstm

    X_train, y_train = _capped(X_train, y_train, budget.max_train_samples, seed, 1)
    X_val, y_val = _capped(X_val, y_val, budget.max_val_samples, seed, 2)
    return train_resnet_lstm(X_train, y_train, X_val, y_val, list(feature_names),
                             budget.feature_set_version, budget.training_config(seed))


def _rf_params(budget: Budget) -> dict[str, Any]:
    return {"n_estimators": budget.rf_n_estimators, "max_features": 1.0, "min_samples_leaf": 1,
            "bootstrap": True, "library": "scikit-learn"}


def _xgb_params(budget: Budget) -> dict[str, Any]:
    return {"n_estimators": budget.xgb_n_estimators, "learning_rate": 0.3, "max_depth": 6,
            "tree_method": "hist", "library": "xgboost"}


def _resnet_params(budget: Budget) -> dict[str, Any]:
    return {k: v for k, v in budget.training_config(0).to_params().items() if k != "seed"}


MODELS: dict[str, ModelSpec] = {
    "resnet_lstm": ModelSpec("resnet_lstm", "ResNet-LSTM", _fit_resnet_lstm, True,
                             _resnet_params),
    "random_forest": ModelSpec("random_forest", "Random Forest", _fit_rf, False, _rf_params),
    "xgboost": ModelSpec("xgboost", "XGBoost", _fit_xgb, False, _xgb_params),
}


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
