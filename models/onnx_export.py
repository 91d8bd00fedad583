"""Export a trained model to ONNX (raw covariates in, ppm out); prove the export matches torch."""

from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from models.deployable import DeployableXCO2Model
from models.fast_network import fast_form
from models.onnx_contract import INPUT_NAME, OPSET, OUTPUT_NAME, UNCERTAINTY_OUTPUT_NAME, encode_metadata
from models.onnx_session import open_session, predict_batched
from models.training import TrainedModel

log = logging.getLogger(__name__)

# "fast": the network in its fast inference form (models/fast_network.py: the batch as one image
# for the convolutions, BatchNorm folded, the LSTM unrolled), the production form;
# "reference": the network as trained (Conv/BatchNorm/LSTM nodes), the export before the fast form,
# kept for the benchmark and as a fallback.
EXPORT_FORMS = ("fast", "reference")
# Rows of the parity probe run inside export_onnx (a full batch and a ragged one of 7).
EXPORT_PROBE_ROWS = 256
EXPORT_TOLERANCE_PPM = 1e-3


class OnnxParityError(AssertionError):
    """The ONNX graph does not reproduce the torch model."""


def export_module(trained: TrainedModel, form: str = "fast") -> nn.Module:
    """The torch module that `export_onnx` traces: the deployable wrapper (preprocessing, scalers,
    uncertainty, whatever else it holds) with, for form "fast", its network replaced by
    fast_form(network) on a deep copy, so `trained` itself is never modified."""
    if form not in EXPORT_FORMS:
        raise ValueError(f"unknown ONNX export form {form!r}; expected one of {EXPORT_FORMS}")
    deployable = trained.deployable_with_uncertainty() if trained.spread is not None else trained.deployable()
    if form == "reference":
        return deployable
    fast = copy.deepcopy(deployable)
    holders = [m for m in fast.modules() if isinstance(m, DeployableXCO2Model)]
    if not holders:
        raise TypeError(f"no DeployableXCO2Model inside {type(fast).__name__}: cannot swap in the fast network")
    for holder in holders:
        holder.network = fast_form(holder.network)
    return fast.eval()


def mapping_metadata(trained: TrainedModel) -> dict[str, Any] | None:
    """What the mapping path needs besides the graph (None for a model without a background)."""
    if trained.background is None:
        return None
    return {"target": "anomaly from background", "background": trained.background.to_dict(),
            "anomaly_scale": float(trained.anomaly_scale),
            "residual_field": trained.residual_field.to_dict() if trained.residual_field is not None else None}


def export_onnx(trained: TrainedModel, path: str | Path, form: str = "fast") -> Path:
    """Write `trained` as ONNX: input 'features' float32 [batch, n_features] raw covariates,
    output 'xco2' float32 [batch] ppm and, when the model has a calibrated spread model, output
    'xco2_uncertainty' float32 [batch] ppm; only the batch axis is dynamic. Feature names, feature
    set version, scalers and the uncertainty calibration travel as metadata_props. Returns the path.

    `form`: "fast" (default; the network in its fast inference form, several times faster in ONNX
    Runtime on CPUs) or "reference" (the graph as exported before, Conv/BatchNorm/LSTM nodes).
    Either way the file is only published after it reproduces the torch model on a probe sample
    within EXPORT_TOLERANCE_PPM on every output (OnnxParityError otherwise, with the figure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spread = trained.spread
    with_uncertainty = spread is not None
    deployable = export_module(trained, form)
    outputs = [OUTPUT_NAME, UNCERTAINTY_OUTPUT_NAME] if with_uncertainty else [OUTPUT_NAME]
    # Two rows, not one: a traced batch of 1 invites size-1 specialisations in the graph.
    example = torch.from_numpy(
        np.tile(np.asarray(trained.scalers.feature_mean, dtype=np.float32), (2, 1))
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The exporter warns that an LSTM traced at batch > 1 may not run at other batch
            # sizes; check_onnx_parity runs other batch sizes and proves it does here.
            warnings.filterwarnings("ignore", message=".*batch_size other than 1.*LSTM")
            # nn.LSTM's own shape checks are traced as constants; also covered by that proof.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning,
                                    module=r"torch\.nn\.modules\.rnn")
            # The constant folder reports Slice nodes it leaves alone; ONNX Runtime folds them when
            # it loads the graph, and the parity probe below checks the result either way.
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            # dynamo=False: the TorchScript exporter handles nn.LSTM with a dynamic batch on
            # torch 2.13; the dynamo exporter is the default and must be opted out of explicitly.
            torch.onnx.export(
                deployable,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=outputs,
                dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
                do_constant_folding=True,
            )
        model = onnx.load(str(tmp))
        uncertainty = ({"meaning": "half-width of the calibrated 68% interval", "units": "ppm",
                        "scale": spread.scale, "n_calibration": spread.n_calibration}
                       if spread is not None else None)
        metadata = encode_metadata(
            list(trained.feature_names), trained.feature_set_version, trained.scalers.to_dict(), uncertainty,
            mapping_metadata(trained),
        )
        for key, value in metadata.items():
            prop = model.metadata_props.add()
            prop.key, prop.value = key, value
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
        worst = _probe_parity(trained, tmp, path)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("exported ONNX model (%d features, %s, form %s, probe parity %.2e ppm) to %s", trained.n_features,
             trained.feature_set_version, form, worst, path)
    return path


def _probe_parity(trained: TrainedModel, onnx_path: Path, published_as: Path) -> float:
    """Max |torch - ONNX| (ppm, every output) on rows drawn around the training features (mean +
    std x N(0, 1), fixed seed), run as one full and one ragged batch; raises OnnxParityError above
    EXPORT_TOLERANCE_PPM. The torch side is the model as trained (reference network), so a fast
    graph is checked against the network it replaces."""
    mean, std = trained.scalers.feature_arrays()
    rng = np.random.default_rng(20240601)
    X = (np.asarray(mean, np.float64) + np.asarray(std, np.float64)
         * rng.standard_normal((EXPORT_PROBE_ROWS, trained.n_features))).astype(np.float32)
    expected = {OUTPUT_NAME: trained.predict(X)}
    if trained.spread is not None:
        expected[UNCERTAINTY_OUTPUT_NAME] = trained.predict_uncertainty(X)
    session, _ = open_session(onnx_path, prefer_cuda=False)
    names = list(expected)
    worst = 0.0
    for rows in (X, X[:7]):
        for name, got in zip(names, session.run(names, {INPUT_NAME: rows})):
            diff = float(np.max(np.abs(got.astype(np.float64) - expected[name][:len(rows)])))
            if not np.isfinite(diff) or diff > EXPORT_TOLERANCE_PPM:
                raise OnnxParityError(
                    f"ONNX export {published_as}: output {name!r} differs from the torch model by {diff:.3g} ppm "
                    f"on a batch of {len(rows)} probe rows (tolerance {EXPORT_TOLERANCE_PPM:g} ppm); not published")
            worst = max(worst, diff)
    return worst


def check_onnx_parity(
    trained: TrainedModel,
    onnx_path: str | Path,
    X: np.ndarray,
    batch_sizes: Sequence[int] = (7, 1000),
    tolerance_ppm: float = 1e-3,
) -> float:
    """Max |torch - ONNX| in ppm over X, running ONNX at each batch size (so the dynamic batch
    axis is exercised, including a ragged last batch). Raises OnnxParityError above tolerance.

    Runs on the CPU provider: parity is a property of the graph, and GPU kernels (TF32) would add
    their own rounding on top."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"parity needs a non-empty [n, n_features] sample, got {X.shape}")
    expected = trained.predict(X)
    session, _ = open_session(onnx_path, prefer_cuda=False)
    worst = 0.0
    for batch_size in batch_sizes:
        got = predict_batched(session, X, batch_size=batch_size)
        diff = float(np.max(np.abs(got.astype(np.float64) - expected)))
        log.debug("ONNX parity at batch %d: max |diff| %.2e ppm", batch_size, diff)
        if not np.isfinite(diff) or diff > tolerance_ppm:
            raise OnnxParityError(
                f"ONNX export {onnx_path} differs from the torch model by {diff:.3g} ppm at "
                f"batch size {batch_size} (tolerance {tolerance_ppm:g} ppm); do not deploy it"
            )
        worst = max(worst, diff)
    if trained.spread is not None:
        # The uncertainty output too: one run is enough, the graph is the same one.
        got = session.run([UNCERTAINTY_OUTPUT_NAME], {INPUT_NAME: X})[0]
        diff = float(np.max(np.abs(got.astype(np.float64) - trained.predict_uncertainty(X))))
        if not np.isfinite(diff) or diff > tolerance_ppm:
            raise OnnxParityError(
                f"ONNX export {onnx_path}: uncertainty output differs from the torch model by {diff:.3g} ppm "
                f"(tolerance {tolerance_ppm:g} ppm); do not deploy it")
        worst = max(worst, diff)
    log.info("ONNX parity: max |torch - onnx| = %.2e ppm over %d samples, batches %s",
             worst, X.shape[0], list(batch_sizes))
    return worst
