"""Training the ResNet-LSTM with the paper's Table 5 recipe.

AdamW, L1 loss on the standardised target, ReduceLROnPlateau and early stopping, both on the
validation loss, best weights restored at the end. Losses are reported in ppm: the L1 loss in
standardised units times the target std, i.e. the mean absolute error in ppm (train: with dropout
active, averaged over the epoch's batches; validation: eval mode, whole validation set).

Reproducibility: the weights are initialised from `torch.manual_seed(seed)` and the batch order
comes from `numpy.random.default_rng(seed)`; the caller's global RNG state is restored afterwards.
Bit-identical on CPU for the same thread count; on CUDA cuDNN runs in deterministic mode.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from models.background import Background
from models.deployable import DeployableWithUncertainty, DeployableXCO2Model
from models.resnet_lstm import ResNetLSTM
from models.scaling import Scalers
from models.uncertainty import SpreadModel

if TYPE_CHECKING:  # rich only when a progress bar is drawn; the field (scipy) only where maps are made
    from rich.progress import Progress

    from models.residual_field import ResidualField

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, float, float, float], None]
"""on_epoch(epoch, train_loss_ppm, val_loss_ppm, lr): epoch counts from 1."""

# Validation and prediction hold no activations for backprop, so they can take larger batches.
_INFERENCE_BATCH = 8192


class TrainingError(RuntimeError):
    """Training cannot go on (diverged to nan/inf)."""


@dataclass(frozen=True)
class TrainingConfig:
    """Table 5 of the reference paper; `device='auto'` picks cuda when torch sees one."""

    max_epochs: int = 200
    batch_size: int = 1024
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    lr_patience: int = 5
    lr_factor: float = 0.5
    early_stopping_patience: int = 10
    seed: int = 42
    device: str = "auto"

    def __post_init__(self) -> None:
        problems = []
        if self.max_epochs < 1:
            problems.append(f"max_epochs must be >= 1, got {self.max_epochs}")
        if self.batch_size < 2:
            # BatchNorm cannot normalise a batch of one sample.
            problems.append(f"batch_size must be >= 2, got {self.batch_size}")
        if not self.learning_rate >= 0:
            problems.append(f"learning_rate must be >= 0, got {self.learning_rate}")
        if not self.weight_decay >= 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.lr_patience < 0:
            problems.append(f"lr_patience must be >= 0, got {self.lr_patience}")
        if not 0 < self.lr_factor < 1:
            problems.append(f"lr_factor must be in (0, 1), got {self.lr_factor}")
        if self.early_stopping_patience < 1:
            problems.append(
                f"early_stopping_patience must be >= 1, got {self.early_stopping_patience}"
            )
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            problems.append(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        if problems:
            raise ValueError("invalid TrainingConfig: " + "; ".join(problems))

    def to_params(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} requested but torch sees no CUDA GPU "
            f"(torch {torch.__version__}); use device='auto' or 'cpu'"
        )
    return torch.device(device)


class EarlyStopping:
    """Tracks the best validation loss; asks to stop after `patience` epochs without a new best."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_loss = math.inf
        self.best_epoch = 0
        self.epochs_without_improvement = 0

    def update(self, epoch: int, loss: float) -> bool:
        """Record one epoch's loss; True when it is a new best (the caller keeps its weights)."""
        if loss < self.best_loss:
            self.best_loss, self.best_epoch = loss, epoch
            self.epochs_without_improvement = 0
            return True
        self.epochs_without_improvement += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.epochs_without_improvement >= self.patience


@dataclass
class TrainedModel:
    """A trained network (eval mode, on CPU) with everything needed to use it on raw covariates."""

    model: ResNetLSTM
    scalers: Scalers
    feature_names: tuple[str, ...]
    feature_set_version: str
    history: list[dict[str, float]]
    best_epoch: int
    config: TrainingConfig = field(default_factory=TrainingConfig)
    n_train: int = 0
    n_val: int = 0
    stopped_early: bool = False
    trained_on: str = "cpu"
    training_seconds: float = 0.0
    spread: SpreadModel | None = None  # once calibrated
    # With a background (models/background.py) the network learned the anomaly from it; the map is
    # background + anomaly_scale x anomaly (+ the daily anomaly field, applied where maps are made).
    background: Background | None = None
    anomaly_scale: float = 1.0
    residual_field: ResidualField | None = None  # once fitted

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def best_val_loss(self) -> float:
        return self.history[self.best_epoch - 1]["val_loss"]

    def deployable(self) -> DeployableXCO2Model:
        """The network with its scalers baked in (shares the weights), in eval mode on CPU."""
        return DeployableXCO2Model(self.model, self.scalers, self.background, self.feature_names,
                                   self.anomaly_scale).eval()

    def deployable_with_uncertainty(self) -> DeployableWithUncertainty:
        """Both outputs (XCO2, calibrated uncertainty); needs `spread` (see models/uncertainty.py)."""
        if self.spread is None:
            raise ValueError("this model has no calibrated uncertainty: fit and calibrate a spread model first")
        return DeployableWithUncertainty(self.deployable(), self.spread.network.eval(), self.spread.scale).eval()

    def predict_uncertainty(self, X: np.ndarray) -> np.ndarray:
        """Half-width (ppm) of the calibrated 68% interval for raw covariates [n, n_features]."""
        if self.spread is None:
            raise ValueError("this model has no calibrated uncertainty: fit and calibrate a spread model first")
        return self.spread.uncertainty(np.asarray(X), self.scalers).astype(np.float32)

    def predict(self, X: np.ndarray, batch_size: int = _INFERENCE_BATCH) -> np.ndarray:
        """Raw covariates [n, n_features] -> XCO2 ppm [n] (float32), batched, without grad."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(
                f"expected features of shape [n, {self.n_features}] "
                f"({', '.join(self.feature_names[:3])}, ...), got {tuple(X.shape)}"
            )
        # The same torch module that is exported to ONNX, so parity compares like with like.
        deployable = self.deployable()
        out = np.empty(X.shape[0], dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, X.shape[0], batch_size):
                chunk = np.ascontiguousarray(X[start : start + batch_size], dtype=np.float32)
                out[start : start + len(chunk)] = deployable(torch.from_numpy(chunk)).numpy()
        return out


def _feature_matrix(name: str, X: npt.ArrayLike, feature_names: Sequence[str]) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(feature_names):
        raise ValueError(
            f"{name}: expected shape [n, {len(feature_names)}] (one column per feature name), "
            f"got {tuple(X.shape)}"
        )
    bad = ~np.isfinite(X)
    if bad.any():
        counts = bad.sum(axis=0)
        which = [f"{feature_names[int(j)]} ({counts[j]})" for j in np.flatnonzero(counts)]
        raise ValueError(f"{name}: non-finite values in features: {', '.join(which[:10])}")
    return X


def _target_vector(name: str, y: npt.ArrayLike, n_rows: int) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1 or y.shape[0] != n_rows:
        raise ValueError(f"{name}: expected shape [{n_rows}] to match the features, got {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError(f"{name}: {int((~np.isfinite(y)).sum())} non-finite XCO2 values")
    return y


def _batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    # A lone trailing sample would break BatchNorm in train mode; give it to the previous batch.
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2] = np.concatenate([chunks[-2], chunks.pop()])
    return chunks


def _validation_mae_ppm(
    model: nn.Module, X: torch.Tensor, y: torch.Tensor, target_std: float
) -> float:
    """Mean absolute error in ppm of the model (eval mode) on standardised validation tensors."""
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=X.device)
    with torch.no_grad():
        for start in range(0, X.shape[0], _INFERENCE_BATCH):
            pred = model(X[start : start + _INFERENCE_BATCH])
            total += (pred - y[start : start + _INFERENCE_BATCH]).abs().sum(dtype=torch.float64)
    return float(total.item()) / X.shape[0] * target_std


def _progress(show: bool) -> Progress | None:
    if not show:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.progress import TimeElapsedColumn

    return Progress(
        TextColumn("ResNet-LSTM epoch"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    )


def train_resnet_lstm(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    feature_names: Sequence[str],
    feature_set_version: str,
    config: TrainingConfig | None = None,
    on_epoch: EpochCallback | None = None,
    show_progress: bool = False,
    background: Background | None = None,
    sample_weight: np.ndarray | None = None,
) -> TrainedModel:
    """Train on raw covariates and XCO2 (ppm); scalers are fitted on the training split only.

    background (models.background.Background): the network learns y - background(X), and the
    trained model predicts background + anomaly. sample_weight: per training sample (independent
    soundings it stands for); the L1 loss is their weighted mean, so a GOSAT sounding spread over
    80 cells counts once.

    history rows: epoch (from 1), train_loss and val_loss (MAE in ppm, see the module doc), lr
    (the learning rate that epoch ran with). on_epoch receives the same four numbers as each
    epoch ends; show_progress draws a rich progress bar over the epochs."""
    config = config or TrainingConfig()
    feature_names = tuple(str(n) for n in feature_names)
    if len(set(feature_names)) != len(feature_names):
        raise ValueError("feature_names must be unique")
    if not str(feature_set_version).strip():
        raise ValueError("feature_set_version must not be empty")
    X_train = _feature_matrix("X_train", X_train, feature_names)
    X_val = _feature_matrix("X_val", X_val, feature_names)
    y_train = _target_vector("y_train", y_train, X_train.shape[0])
    y_val = _target_vector("y_val", y_val, X_val.shape[0])
    if X_train.shape[0] < 2 or X_val.shape[0] < 1:
        raise ValueError(
            f"need >= 2 training and >= 1 validation samples, got {X_train.shape[0]} and "
            f"{X_val.shape[0]}"
        )
    if len(feature_names) < 16:
        log.warning(
            "%d features: Table 4's four stride-2 blocks leave a very short sequence for the "
            "LSTM (the paper uses 46)",
            len(feature_names),
        )

    if background is not None:
        y_train = y_train - background.evaluate_features(X_train, feature_names)
        y_val = y_val - background.evaluate_features(X_val, feature_names)
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight, dtype=np.float64)
        if (sample_weight.shape != (X_train.shape[0],) or not np.isfinite(sample_weight).all()
                or (sample_weight < 0).any() or not sample_weight.sum() > 0):
            raise ValueError(f"sample_weight must be {X_train.shape[0]} finite values >= 0, not all 0")
        sample_weight = sample_weight / sample_weight.mean()
    device = resolve_device(config.device)
    # A sample of weight 0 must not steer training, the target's standardisation included.
    counted = slice(None) if sample_weight is None else sample_weight > 0
    scalers = Scalers.fit(X_train[counted], y_train[counted])
    started = time.perf_counter()
    rng_devices = []
    if device.type == "cuda":
        rng_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with (
        torch.random.fork_rng(devices=rng_devices),
        torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True),
    ):
        torch.manual_seed(config.seed)
        order_rng = np.random.default_rng(config.seed)
        model = ResNetLSTM(len(feature_names)).to(device)
        history, best_epoch, stopped_early = _fit(
            model, scalers, X_train, y_train, X_val, y_val, config, device, order_rng, on_epoch,
            show_progress, sample_weight,
        )
    model = model.cpu().eval()
    elapsed = time.perf_counter() - started
    trained = TrainedModel(
        model=model,
        scalers=scalers,
        feature_names=feature_names,
        feature_set_version=str(feature_set_version),
        history=history,
        best_epoch=best_epoch,
        config=config,
        n_train=int(X_train.shape[0]),
        n_val=int(X_val.shape[0]),
        stopped_early=stopped_early,
        trained_on=str(device),
        training_seconds=elapsed,
        background=background,
    )
    log.info(
        "trained ResNet-LSTM on %s: %d epochs%s, best epoch %d, validation MAE %.3f ppm, %.1f s",
        device, len(history), " (early stop)" if stopped_early else "", best_epoch,
        trained.best_val_loss, elapsed,
    )
    return trained


def _fit(
    model: ResNetLSTM,
    scalers: Scalers,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    config: TrainingConfig,
    device: torch.device,
    order_rng: np.random.Generator,
    on_epoch: EpochCallback | None,
    show_progress: bool,
    sample_weight: np.ndarray | None = None,
) -> tuple[list[dict[str, float]], int, bool]:
    Xt = torch.from_numpy(scalers.transform_features(X_train)).to(device)
    yt = torch.from_numpy(scalers.transform_target(y_train)).to(device)
    Xv = torch.from_numpy(scalers.transform_features(X_val)).to(device)
    yv = torch.from_numpy(scalers.transform_target(y_val)).to(device)
    target_std = scalers.target_std

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=config.lr_factor, patience=config.lr_patience
    )
    loss_fn = nn.L1Loss()
    wt = torch.from_numpy(sample_weight.astype(np.float32)).to(device) if sample_weight is not None else None
    stopper = EarlyStopping(config.early_stopping_patience)
    best_state: dict[str, torch.Tensor] = {}
    history: list[dict[str, float]] = []
    n_train = Xt.shape[0]

    progress = _progress(show_progress)
    task = progress.add_task("", total=config.max_epochs) if progress else None
    if progress:
        progress.start()
    try:
        for epoch in range(1, config.max_epochs + 1):
            lr = float(optimizer.param_groups[0]["lr"])
            model.train()
            # Summed on the device: one host sync per epoch instead of one per batch.
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            for batch in _batches(order_rng.permutation(n_train), config.batch_size):
                idx = torch.from_numpy(batch).to(device)
                optimizer.zero_grad(set_to_none=True)
                if wt is None:
                    loss = loss_fn(model(Xt[idx]), yt[idx])
                else:
                    w = wt[idx]
                    loss = (w * (model(Xt[idx]) - yt[idx]).abs()).sum() / w.sum().clamp_min(1e-12)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach().double() * len(batch)
            train_loss = float(loss_sum.item()) / n_train * target_std
            val_loss = _validation_mae_ppm(model, Xv, yv, target_std)
            if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                raise TrainingError(
                    f"training diverged at epoch {epoch}: train loss {train_loss}, "
                    f"validation loss {val_loss} ppm (lr {lr:g}); lower learning_rate"
                )
            history.append(
                {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": lr}
            )
            if stopper.update(epoch, val_loss):
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            scheduler.step(val_loss)
            log.debug("epoch %d: train %.4f ppm, val %.4f ppm, lr %g", epoch, train_loss,
                      val_loss, lr)
            if on_epoch is not None:
                on_epoch(epoch, train_loss, val_loss, lr)
            if progress and task is not None:
                progress.update(task, advance=1, description=(
                    f"val MAE {val_loss:.3f} ppm (best {stopper.best_loss:.3f} @ "
                    f"{stopper.best_epoch}), lr {lr:.1e}"
                ))
            if stopper.should_stop:
                break
    finally:
        if progress:
            progress.stop()

    model.load_state_dict(best_state)
    stopped_early = len(history) < config.max_epochs
    return history, stopper.best_epoch, stopped_early
