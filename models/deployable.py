"""The trained network with its scalers baked in: raw covariates in, XCO2 in ppm out.

This is the one form that leaves the training process (ONNX export, MLflow pytorch flavour), so a
consumer can never pair a network with the wrong scalers.
"""

from __future__ import annotations

import torch
from torch import nn

from models.background import SPACE_UNIT_DEG, TERMS, Background, input_columns
from models.scaling import Scalers


class BackgroundTerm(nn.Module):
    """models/background.py's fit, evaluated from the raw feature columns (years, doy sin/cos, lat, lon)."""

    def __init__(self, background: Background, feature_names: list[str] | tuple[str, ...]) -> None:
        super().__init__()
        self.columns = input_columns(feature_names)
        self.register_buffer("coefficients", torch.tensor(background.coefficients, dtype=torch.float32))
        self.register_buffer("reference", torch.tensor(
            [background.reference_years, background.reference_latitude, background.reference_longitude],
            dtype=torch.float32))
        if len(background.coefficients) != len(TERMS):
            raise ValueError(f"background has {len(background.coefficients)} coefficients for {len(TERMS)} terms")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        years, s, c, lat, lon = (features[:, i] for i in self.columns)
        terms = torch.stack([torch.ones_like(s), years - self.reference[0], s, c, 2 * s * c, c * c - s * s,
                             (lat - self.reference[1]) / SPACE_UNIT_DEG, (lon - self.reference[2]) / SPACE_UNIT_DEG],
                            dim=1)
        return terms @ self.coefficients


class DeployableXCO2Model(nn.Module):
    """features [batch, n_features] (raw, float32) -> XCO2 [batch] (ppm).

    With a background (models/background.py) the network's output is the anomaly from it, scaled
    by `anomaly_scale` (the share of the network's anomaly that held-out data support)."""

    def __init__(self, network: nn.Module, scalers: Scalers, background: Background | None = None,
                 feature_names: list[str] | tuple[str, ...] | None = None, anomaly_scale: float = 1.0) -> None:
        super().__init__()
        self.network = network
        self.background = BackgroundTerm(background, feature_names or ()) if background is not None else None
        self.register_buffer("anomaly_scale", torch.tensor(float(anomaly_scale), dtype=torch.float32))
        mean, std = scalers.feature_arrays()
        # Buffers, not parameters: they are saved with the module and exported as constants.
        self.register_buffer("feature_mean", torch.from_numpy(mean.copy()))
        self.register_buffer("feature_std", torch.from_numpy(std.copy()))
        self.register_buffer("target_mean", torch.tensor(scalers.target_mean, dtype=torch.float32))
        self.register_buffer("target_std", torch.tensor(scalers.target_std, dtype=torch.float32))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        standardised = (features - self.feature_mean) / self.feature_std
        out = self.network(standardised) * self.target_std + self.target_mean
        if self.background is None:
            return out
        return self.background(features) + self.anomaly_scale * out


class DeployableWithUncertainty(nn.Module):
    """features [batch, n_features] (raw) -> (XCO2 [batch], uncertainty [batch]), both in ppm.

    The uncertainty is the half-width of the calibrated 68% interval (see models/uncertainty.py)."""

    def __init__(self, xco2_model: DeployableXCO2Model, spread_network: nn.Module, scale: float) -> None:
        super().__init__()
        self.xco2_model = xco2_model
        self.spread_network = spread_network
        self.register_buffer("spread_scale", torch.tensor(float(scale), dtype=torch.float32))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        standardised = (features - self.xco2_model.feature_mean) / self.xco2_model.feature_std
        return self.xco2_model(features), self.spread_network(standardised) * self.spread_scale
