"""Standardisation of the covariates and of the XCO2 target, fitted on the training split only.

numpy only: the inference side (ONNX workers) reads these numbers without importing torch.
The float32 transform here is the same arithmetic the exported ONNX graph performs, so the torch
predictions and the ONNX predictions see bit-identical standardised inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# A feature that is constant in the training split (e.g. one satellite only in a small region)
# has std 0; dividing by 1 instead maps it to 0 rather than to inf/nan.
_MIN_STD = 1e-12


def _guarded_std(std: np.ndarray) -> np.ndarray:
    std = np.asarray(std, dtype=np.float64)
    return np.where(np.isfinite(std) & (std > _MIN_STD), std, 1.0)


@dataclass(frozen=True)
class Scalers:
    """Per-feature mean/std of the covariates and mean/std of XCO2 (ppm)."""

    feature_mean: tuple[float, ...]
    feature_std: tuple[float, ...]
    target_mean: float
    target_std: float

    def __post_init__(self) -> None:
        if len(self.feature_mean) != len(self.feature_std):
            raise ValueError(
                f"scalers: {len(self.feature_mean)} feature means but "
                f"{len(self.feature_std)} feature stds"
            )
        if not self.target_std > 0 or any(not s > 0 for s in self.feature_std):
            raise ValueError("scalers: standard deviations must be > 0 (use Scalers.fit)")

    @property
    def n_features(self) -> int:
        return len(self.feature_mean)

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray) -> "Scalers":
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] == 0:
            raise ValueError(f"scalers: features must be a non-empty 2-D array, got {X.shape}")
        feature_std = _guarded_std(X.std(axis=0))
        target_std = float(_guarded_std(np.array([y.std()]))[0])
        return cls(
            feature_mean=tuple(float(v) for v in X.mean(axis=0)),
            feature_std=tuple(float(v) for v in feature_std),
            target_mean=float(y.mean()),
            target_std=target_std,
        )

    # The arrays are rebuilt on each call: cheap next to a batch, and it keeps the dataclass
    # frozen and JSON-plain.
    def feature_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.asarray(self.feature_mean, dtype=np.float32),
            np.asarray(self.feature_std, dtype=np.float32),
        )

    def transform_features(self, X: np.ndarray) -> np.ndarray:
        """Raw covariates -> standardised float32, in float32 like the ONNX graph."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(
                f"expected features of shape [n, {self.n_features}], got {tuple(X.shape)}"
            )
        mean, std = self.feature_arrays()
        return (X - mean) / std

    def transform_target(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        return ((y - self.target_mean) / self.target_std).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature_mean": list(self.feature_mean),
            "feature_std": list(self.feature_std),
            "target_mean": self.target_mean,
            "target_std": self.target_std,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Scalers":
        missing = {"feature_mean", "feature_std", "target_mean", "target_std"} - set(data)
        if missing:
            raise ValueError(f"scalers: missing keys {sorted(missing)}")
        return cls(
            feature_mean=tuple(float(v) for v in data["feature_mean"]),
            feature_std=tuple(float(v) for v in data["feature_std"]),
            target_mean=float(data["target_mean"]),
            target_std=float(data["target_std"]),
        )
