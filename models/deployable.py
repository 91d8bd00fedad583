"""The trained network with its scalers baked in: raw covariates in, XCO2 in ppm out.

This is the one form that leaves the training process (ONNX export, MLflow pytorch flavour), so a
consumer can never pair a network with the wrong scalers.
"""

from __future__ import annotations

import torch
from torch import nn

from models.scaling import Scalers


class DeployableXCO2Model(nn.Module):
    """features [batch, n_features] (raw, float32) -> XCO2 [batch] (ppm)."""

    def __init__(self, network: nn.Module, scalers: Scalers) -> None:
        super().__init__()
        self.network = network
        mean, std = scalers.feature_arrays()
        # Buffers, not parameters: they are saved with the module and exported as constants.
        self.register_buffer("feature_mean", torch.from_numpy(mean.copy()))
        self.register_buffer("feature_std", torch.from_numpy(std.copy()))
        self.register_buffer("target_mean", torch.tensor(scalers.target_mean, dtype=torch.float32))
        self.register_buffer("target_std", torch.tensor(scalers.target_std, dtype=torch.float32))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        standardised = (features - self.feature_mean) / self.feature_std
        return self.network(standardised) * self.target_std + self.target_mean


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
