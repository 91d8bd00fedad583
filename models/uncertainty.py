"""Per-cell uncertainty of the XCO2 maps: a spread network calibrated on held-out data.

The spread network learns where the ResNet-LSTM errs more (heteroscedastic Gaussian likelihood on
residuals of samples the network was not fitted to); one scale factor then calibrates it so that
the nominal 68% interval (prediction +/- uncertainty) covers 68% of held-out observations. The
calibration data should look like the maps' use: whole spatial blocks nobody trained on, because
almost every mapped cell is one no satellite observed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.scaling import Scalers

log = logging.getLogger(__name__)

NOMINAL_COVERAGE = 0.6827  # +/- 1 sigma of a Gaussian
_MIN_SIGMA = 1e-3  # in units of the residual scale: keeps the likelihood finite


class SpreadNetwork(nn.Module):
    """standardised features [batch, n] -> expected error size [batch] in ppm (before calibration)."""

    def __init__(self, n_features: int, residual_scale_ppm: float, hidden: int = 64) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )
        self.register_buffer("residual_scale", torch.tensor(float(residual_scale_ppm), dtype=torch.float32))

    def forward(self, standardised: torch.Tensor) -> torch.Tensor:
        raw = self.layers(standardised).squeeze(-1)
        return (nn.functional.softplus(raw) + _MIN_SIGMA) * self.residual_scale


@dataclass
class SpreadModel:
    """The spread network and its calibration: uncertainty_ppm = scale * network(x)."""

    network: SpreadNetwork
    scale: float = 1.0
    n_fit: int = 0
    n_calibration: int = 0

    def raw_sigma(self, X: np.ndarray, scalers: Scalers) -> np.ndarray:
        self.network.eval()
        with torch.inference_mode():
            x = torch.from_numpy(scalers.transform_features(np.asarray(X, dtype=np.float64)))
            return self.network(x).numpy().astype(np.float64)

    def uncertainty(self, X: np.ndarray, scalers: Scalers) -> np.ndarray:
        return self.scale * self.raw_sigma(X, scalers)


def fit_spread(
    X: np.ndarray, residuals: np.ndarray, scalers: Scalers, seed: int = 42, epochs: int = 80,
    batch_size: int = 512,
) -> SpreadModel:
    """Fit the spread network to residuals (observed - predicted, ppm) of held-out samples.

    Gaussian negative log-likelihood, AdamW, the best of `epochs` on an inner fifth kept aside."""
    X = np.asarray(X, dtype=np.float64)
    r = np.asarray(residuals, dtype=np.float64)
    if X.ndim != 2 or len(X) != len(r) or len(r) < 20:
        raise ValueError(f"need >= 20 residuals with a matching [n, k] feature matrix, got {X.shape} and {r.shape}")
    if not np.isfinite(r).all():
        raise ValueError(f"{int((~np.isfinite(r)).sum())} non-finite residuals")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(r))
    n_inner = max(5, len(r) // 5)
    inner, fit = order[:n_inner], order[n_inner:]
    scale = float(np.sqrt(np.mean(r[fit] ** 2))) or 1.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = SpreadNetwork(X.shape[1], scale)
        xs = torch.from_numpy(scalers.transform_features(X))
        rs = torch.from_numpy(r.astype(np.float32))
        optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3, weight_decay=1e-4)
        best, best_state = np.inf, None
        for _ in range(epochs):
            fit = fit[rng.permutation(len(fit))]
            network.train()
            for start in range(0, len(fit), batch_size):
                idx = torch.from_numpy(fit[start : start + batch_size])
                sigma = network(xs[idx])
                loss = (torch.log(sigma) + 0.5 * (rs[idx] / sigma) ** 2).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            network.eval()
            with torch.no_grad():
                sigma = network(xs[inner])
                inner_loss = float((torch.log(sigma) + 0.5 * (rs[inner] / sigma) ** 2).mean())
            if inner_loss < best:
                best, best_state = inner_loss, {k: v.clone() for k, v in network.state_dict().items()}
        network.load_state_dict(best_state)
    network.eval()
    return SpreadModel(network=network, n_fit=len(r))


def calibrate(spread: SpreadModel, X: np.ndarray, residuals: np.ndarray, scalers: Scalers) -> SpreadModel:
    """Set the scale so that |residual| <= uncertainty for the nominal share of (X, residuals)."""
    r = np.abs(np.asarray(residuals, dtype=np.float64))
    if len(r) < 20:
        raise ValueError(f"calibration needs >= 20 held-out residuals, got {len(r)}")
    ratio = r / spread.raw_sigma(X, scalers)
    spread.scale = float(np.quantile(ratio, NOMINAL_COVERAGE))
    spread.n_calibration = len(r)
    log.info("uncertainty calibrated on %d held-out residuals: scale %.3f", len(r), spread.scale)
    return spread


def coverage(residuals: np.ndarray, uncertainty: np.ndarray) -> float:
    """Share of |residual| within the +/- uncertainty interval."""
    r = np.abs(np.asarray(residuals, dtype=np.float64))
    u = np.asarray(uncertainty, dtype=np.float64)
    if r.shape != u.shape or r.size == 0:
        raise ValueError(f"residuals {r.shape} and uncertainties {u.shape} must match and be non-empty")
    return float(np.mean(r <= u))
