"""Export a trained model to ONNX (raw covariates in, ppm out); prove the export matches torch."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

from models.onnx_contract import INPUT_NAME, OPSET, OUTPUT_NAME, UNCERTAINTY_OUTPUT_NAME, encode_metadata
from models.onnx_runtime import open_session, predict_batched
from models.training import TrainedModel

log = logging.getLogger(__name__)


class OnnxParityError(AssertionError):
    """The ONNX graph does not reproduce the torch model."""


def export_onnx(trained: TrainedModel, path: str | Path) -> Path:
    """Write `trained` as ONNX: input 'features' float32 [batch, n_features] raw covariates,
    output 'xco2' float32 [batch] ppm and, when the model has a calibrated spread model, output
    'xco2_uncertainty' float32 [batch] ppm; only the batch axis is dynamic. Feature names, feature
    set version, scalers and the uncertainty calibration travel as metadata_props. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with_uncertainty = trained.spread is not None
    deployable = trained.deployable_with_uncertainty() if with_uncertainty else trained.deployable()
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
                        "scale": trained.spread.scale, "n_calibration": trained.spread.n_calibration}
                       if with_uncertainty else None)
        metadata = encode_metadata(
            list(trained.feature_names), trained.feature_set_version, trained.scalers.to_dict(), uncertainty
        )
        for key, value in metadata.items():
            prop = model.metadata_props.add()
            prop.key, prop.value = key, value
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("exported ONNX model (%d features, %s) to %s", trained.n_features,
             trained.feature_set_version, path)
    return path


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
