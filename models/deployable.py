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
