"""Record one training run in MLflow and register its model.

One run holds: params (TrainingConfig, data sizes, feature set), per-epoch train_loss/val_loss/lr
(step = epoch), validation metrics val_*, figures, the ONNX export at onnx/model.onnx,
scalers.json and features.json, and two logged models:

- 'model', the ONNX flavour (mlflow.onnx), which is what the new registered model version points
  at: `models:/<name>@champion` loads with onnx/onnxruntime alone, no torch (registry.champion);
- 'torch_model', the same network in the pytorch flavour, not registered; its URI is the run tag
  `torch_model_uri` (and ModelVersionInfo.torch_model_uri), for retraining or debugging.

For a sqlite tracking DB the artifacts land in <db dir>/mlartifacts (the experiment's artifact
location), not in ./mlruns.

A run names the process that writes it (run tag `xco2.writer`: host, pid and the process's start
time), and a version is complete once its last tag, `xco2.registration = complete`, is set. A
retrain killed between registering a version and tagging it (kill -9, OOM, a lost worker) leaves
a version its writer will never finish: the next registration deletes it (and marks the dead
runs KILLED), so the registry holds no half-described version. Versions of other hosts, or from
before these tags, are left alone: liveness cannot be told from here.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
import mlflow.onnx
import mlflow.pytorch
import numpy as np
import onnx
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, Schema, TensorSpec

from models.holdouts import NetworkShare
from models.onnx_session import read_metadata
from models.training import TrainedModel
from registry.redaction import redact_mapping, redact_uri
from registry.store import (
    FEATURES_ARTIFACT,
    FIGURES_DIR,
    MODEL_NAME_IN_RUN,
    NETWORK_IN_MAP_TAG,
    NETWORK_SHARE_TAG,
    ONNX_ARTIFACT,
    ONNX_SHA256_TAG,
    ONNX_SIZE_TAG,
    SCALERS_ARTIFACT,
    RegistryError,
    artifact_root_for,
    client_for,
    copy_as,
    file_digest,
    model_download_uri,
    write_json,
)

log = logging.getLogger(__name__)

# regression_metrics() keys; logged with a val_ prefix.
_VALIDATION_KEYS = ("rmse", "r2", "slope", "intercept", "mae", "bias", "n")
PARITY_KEY = "onnx_parity_max_abs_ppm"
# MLflow's log_batch limits per call.
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_PER_BATCH = 100
# log_model(name=...) of the unregistered pytorch flavour (the registered ONNX flavour is
# registry.store.MODEL_NAME_IN_RUN, 'model').
TORCH_MODEL_NAME_IN_RUN = "torch_model"
TORCH_MODEL_URI_TAG = "torch_model_uri"
MODEL_FLAVOR_TAG = "model_flavor"
WRITER_TAG = "xco2.writer"
REGISTRATION_TAG = "xco2.registration"
REGISTRATION_COMPLETE = "complete"


@dataclass(frozen=True)
class ModelVersionInfo:
    """torch_model_uri: the run's unregistered pytorch-flavour model (models:/m-...)."""

    name: str
    version: int
    run_id: str
    torch_model_uri: str | None = None

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _start_ticks(pid: int) -> str | None:
    """The process's start time (clock ticks since boot): with the pid, it tells a process from a
    later one that reused the pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[19]


def writer_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid()) or '?'}"


def writer_is_gone(writer: str) -> bool:
    """True only when `writer` names a process of this host that no longer runs."""
    parts = writer.rsplit(":", 2)
    if len(parts) != 3:
        return False
    host, pid, ticks = parts
    if host != socket.gethostname() or not pid.isdigit():
        return False
    now = _start_ticks(int(pid))
    return now is None or (ticks != "?" and now != ticks)


def discard_unfinished(client: MlflowClient, name: str, experiment_id: str) -> list[int]:
    """Delete the versions of `name` whose registration a dead process left unfinished, and mark
    the runs such processes left RUNNING as KILLED; the deleted version numbers."""
    discarded = []
    try:
        versions = list(client.search_model_versions(f"name = '{name}'"))
    except MlflowException:
        versions = []  # no such model yet
    for version in versions:
        if (version.tags or {}).get(REGISTRATION_TAG) == REGISTRATION_COMPLETE or version.aliases:
            continue
        if not version.run_id:
            continue  # no run to name its writer
        try:
            writer = client.get_run(version.run_id).data.tags.get(WRITER_TAG)
        except MlflowException:
            continue
        if writer and writer_is_gone(writer):
            log.warning("model version %s v%s was registered by a process that died before finishing it "
                        "(%s, run %s): deleted", name, version.version, writer, version.run_id)
            client.delete_model_version(name, str(version.version))
            discarded.append(int(version.version))
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        writer = run.data.tags.get(WRITER_TAG)
        if writer and writer_is_gone(writer):
            log.warning("run %s was left running by a process that died (%s): marked KILLED",
                        run.info.run_id, writer)
            client.set_terminated(run.info.run_id, "KILLED")
    return discarded


def ensure_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The experiment's id, creating it with artifacts next to a sqlite DB when it is new."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_root_for(tracking_uri))
        except MlflowException as exc:
            # Another process created it between our lookup and create.
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise RegistryError(f"MLflow experiment {name!r} was created by another process and then vanished; "
                                    "run again") from exc
    wanted = artifact_root_for(tracking_uri)
    if wanted and experiment.artifact_location.rstrip("/") != wanted:
        log.warning(
            "experiment %r keeps its artifacts at %s (set when it was created), not %s",
            name, redact_uri(experiment.artifact_location), wanted,
        )
    if experiment.lifecycle_stage == "deleted":
        raise RegistryError(
            f"MLflow experiment {name!r} is deleted; restore it in the MLflow UI "
            f"(or `mlflow experiments restore --experiment-id {experiment.experiment_id}`) "
            f"or choose another experiment name"
        )
    return experiment.experiment_id


@contextmanager
def _fluent_tracking(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's process-global ("fluent") API at `tracking_uri` for the duration only.

    mlflow.onnx/pytorch.log_model work on the active run of the global tracking URI. Restoring the
    previous values exactly (None included, and the environment variables MLflow sets) keeps this
    call free of side effects on the rest of the process. Not thread-safe, like the fluent API."""
    from mlflow.tracking._model_registry import utils as registry_state
    from mlflow.tracking._tracking_service import utils as tracking_state

    env_keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI",
                "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")
    env_before = {k: os.environ.get(k) for k in env_keys}
    # MLflow keeps "not set" as None; the public getters would return the resolved default and
    # restoring that would pin it, hiding later MLFLOW_TRACKING_URI changes.
    tracking_before = getattr(tracking_state, "_tracking_uri", None)
    registry_before = getattr(registry_state, "_registry_uri", None)
    # MLflow prints run URLs built from the tracking URI, which may hold a password.
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        # None puts back MLflow's "not set" (see above), which its annotations do not admit.
        mlflow.set_tracking_uri(tracking_before)  # type: ignore[arg-type]
        mlflow.set_registry_uri(registry_before)  # type: ignore[arg-type]
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _validation_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"val_{key}" if key in _VALIDATION_KEYS else str(key)
        out[name] = float(value)
    if "val_rmse" not in out:
        raise ValueError(
            "metrics must hold the validation scores of models.evaluation.regression_metrics "
            f"(rmse, r2, slope, mae, bias, n; optionally val_-prefixed), got {sorted(metrics)}"
        )
    return out


def _run_params(trained: TrainedModel, params: Mapping[str, Any] | None) -> dict[str, str]:
    ours = {k: str(v) for k, v in trained.config.to_params().items()}
    ours.update(
        n_train=str(trained.n_train),
        n_val=str(trained.n_val),
        feature_set_version=trained.feature_set_version,
        n_features=str(trained.n_features),
        trained_on=trained.trained_on,
    )
    theirs = redact_mapping(params)
    clashes = sorted(k for k in theirs if k in ours and theirs[k] != ours[k])
    if clashes:
        raise ValueError(
            "params contradict the trained model: "
            + ", ".join(f"{k}={theirs[k]!r} (model: {ours[k]!r})" for k in clashes)
        )
    return {**theirs, **ours}


def _run_metrics(trained: TrainedModel, validation: Mapping[str, float]) -> list[Metric]:
    now = int(time.time() * 1000)
    metrics = []
    for row in trained.history:
        step = int(row["epoch"])
        for key in ("train_loss", "val_loss", "lr"):
            metrics.append(Metric(key, float(row[key]), now, step))
    summary = {
        **validation,
        "best_epoch": trained.best_epoch,
        "epochs_trained": len(trained.history),
        "best_val_loss": trained.best_val_loss,
        "training_seconds": trained.training_seconds,
        NETWORK_SHARE_TAG: trained.anomaly_scale,
    }
    metrics += [Metric(key, float(value), now, 0) for key, value in summary.items()]
    return metrics


def _check_onnx_matches(trained: TrainedModel, onnx_path: Path) -> None:
    meta = read_metadata(onnx_path)
    if (list(meta["feature_names"]) != list(trained.feature_names)
            or meta["feature_set_version"] != trained.feature_set_version):
        raise ValueError(
            f"{onnx_path} was not exported from this trained model: its features "
            f"({meta['feature_set_version']}, {meta['n_features']}) differ from the model's "
            f"({trained.feature_set_version}, {trained.n_features})"
        )


def _pip_requirements() -> list[str]:
    # Explicit, so MLflow does not import-scan the environment (slow, and wrong offline);
    # the local '+cpu' tag is dropped because it only resolves on the PyTorch index.
    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]


def _onnx_pip_requirements() -> list[str]:
    """What loading the registered ONNX flavour needs: onnx, an onnxruntime build, numpy."""
    from importlib import metadata

    requirements = [f"onnx=={onnx.__version__}"]
    for dist in ("onnxruntime-gpu", "onnxruntime"):
        try:
            requirements.append(f"{dist}=={metadata.version(dist)}")
            break
        except metadata.PackageNotFoundError:
            continue
    return requirements + [f"numpy=={np.__version__}"]


def _tensor_specs(values: Iterable[onnx.ValueInfoProto]) -> Schema:
    """An MLflow tensor schema of ONNX graph inputs/outputs (symbolic dimensions as -1)."""
    specs: list[ColSpec | TensorSpec] = []
    for value in values:
        tensor = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        specs.append(TensorSpec(dtype, shape, value.name))
    return Schema(specs)


def _onnx_signature(model: onnx.ModelProto) -> ModelSignature:
    """The export's own signature: input 'features', outputs 'xco2' (and 'xco2_uncertainty' when
    the export has it), so the registry shows what the graph really takes and gives."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    return ModelSignature(inputs=_tensor_specs(inputs), outputs=_tensor_specs(model.graph.output))


def _registered_onnx_digest(client: MlflowClient, tracking_uri: str, name: str, version: int,
                            workdir: Path) -> tuple[str, int]:
    """sha256 and size of the registered version's model.onnx as the registry stores it (the
    bytes every cached copy must have), read back from the registry rather than from our export."""
    uri = model_download_uri(client, client.get_model_version(name, str(version)))
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{uri}/{Path(ONNX_ARTIFACT).name}", dst_path=str(workdir), tracking_uri=tracking_uri)
    return file_digest(local)


def log_training_run(
    tracking_uri: str,
    experiment_name: str,
    registered_model_name: str,
    trained: TrainedModel,
    onnx_path: str | Path,
    metrics: Mapping[str, Any],
    params: Mapping[str, Any] | None = None,
    figures: Sequence[str | Path] = (),
    tags: Mapping[str, Any] | None = None,
    *,
    onnx_parity_max_abs_ppm: float | None = None,
    run_name: str | None = None,
) -> ModelVersionInfo:
    """Log one training run and register its model; returns the new version.

    `metrics`: validation scores from regression_metrics (logged as val_rmse, val_r2, ...);
    the ONNX parity (check_onnx_parity's result) comes as `onnx_parity_max_abs_ppm` or as that
    key in `metrics`. `params` and `tags` are extra run params/tags (secrets redacted)."""
    onnx_path = Path(onnx_path)
    _check_onnx_matches(trained, onnx_path)
    validation = _validation_metrics(metrics)
    if onnx_parity_max_abs_ppm is not None:
        validation[PARITY_KEY] = float(onnx_parity_max_abs_ppm)
    if PARITY_KEY not in validation:
        raise ValueError(
            f"no {PARITY_KEY}: run models.onnx_export.check_onnx_parity on the export and pass "
            "its result, so only verified ONNX files are registered"
        )
    figure_paths = [Path(f) for f in figures]
    missing = [str(f) for f in figure_paths if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"figures not found: {', '.join(missing)}")
    run_params = _run_params(trained, params)
    network = NetworkShare.of(trained)
    run_tags = {**redact_mapping(tags), "feature_set_version": trained.feature_set_version,
                NETWORK_IN_MAP_TAG: network.in_map, WRITER_TAG: writer_identity()}

    onnx_model = onnx.load(str(onnx_path))
    signature = _onnx_signature(onnx_model)
    client = client_for(tracking_uri)
    experiment_id = ensure_experiment(client, experiment_name, tracking_uri)
    discard_unfinished(client, registered_model_name, experiment_id)
    with (
        _fluent_tracking(tracking_uri),
        mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=run_tags) as run,
        tempfile.TemporaryDirectory(prefix="xco2-run-") as tmp,
    ):
        run_id = run.info.run_id
        items = list(run_params.items())
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            batch = items[i : i + _MAX_PARAMS_PER_BATCH]
            client.log_batch(run_id, params=[Param(k, v) for k, v in batch])
        run_metrics = _run_metrics(trained, validation)
        for i in range(0, len(run_metrics), _MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=run_metrics[i : i + _MAX_METRICS_PER_BATCH])

        staged = Path(tmp)
        onnx_dir, onnx_name = ONNX_ARTIFACT.rsplit("/", 1)
        onnx_copy = copy_as(onnx_path, staged / onnx_dir / onnx_name)
        client.log_artifact(run_id, str(onnx_copy), onnx_dir)
        scalers = write_json(staged / SCALERS_ARTIFACT, trained.scalers.to_dict())
        client.log_artifact(run_id, str(scalers))
        features = write_json(staged / FEATURES_ARTIFACT, {
            "feature_names": list(trained.feature_names),
            "feature_set_version": trained.feature_set_version,
            "n_features": trained.n_features,
        })
        client.log_artifact(run_id, str(features))
        for figure in figure_paths:
            client.log_artifact(run_id, str(figure), FIGURES_DIR)

        # The deployable torch form (scalers baked in), kept with the run but not registered:
        # mlflow.pytorch.load_model(<torch_model_uri>) gives raw -> ppm. Pickle, not MLflow's
        # default 'pt2' (torch.export): pickle loads in milliseconds and keeps the dynamic batch;
        # it needs the xco2 package importable where it is loaded.
        torch_info = mlflow.pytorch.log_model(
            trained.deployable(),
            name=TORCH_MODEL_NAME_IN_RUN,
            pip_requirements=_pip_requirements(),
            signature=signature,
            serialization_format="pickle",
        )
        client.set_tag(run_id, TORCH_MODEL_URI_TAG, torch_info.model_uri)
        # The registered form: the verified ONNX export in the ONNX flavour, last, so a version
        # exists only once everything else of the run is logged. One self-contained model.onnx
        # (no external data file) of the graph that passed the parity check.
        info = mlflow.onnx.log_model(
            onnx_model,
            name=MODEL_NAME_IN_RUN,
            registered_model_name=registered_model_name,
            pip_requirements=_onnx_pip_requirements(),
            signature=signature,
            save_as_external_data=False,
        )
        version = int(info.registered_model_version)
        onnx_sha256, onnx_size = _registered_onnx_digest(client, tracking_uri, registered_model_name,
                                                         version, staged / "registered")
        version_tags = {
            "feature_set_version": trained.feature_set_version,
            "val_rmse": f"{validation['val_rmse']:.6g}",
            PARITY_KEY: f"{validation[PARITY_KEY]:.3g}",
            MODEL_FLAVOR_TAG: "onnx",
            TORCH_MODEL_URI_TAG: torch_info.model_uri,
            ONNX_SHA256_TAG: onnx_sha256,
            ONNX_SIZE_TAG: str(onnx_size),
            NETWORK_SHARE_TAG: str(round(network.share, 4)),
            NETWORK_IN_MAP_TAG: network.in_map,
        }
        for key, value in version_tags.items():
            client.set_model_version_tag(registered_model_name, str(version), key, value)
        # The description is the first thing the registry UI shows of a version: whether the network
        # contributes to its maps is read there without opening the tags.
        client.update_model_version(registered_model_name, str(version), description=network.sentence)
        client.set_tag(run_id, "registered_model_version", f"{registered_model_name}/{version}")
        # Last: until this tag is set, the version is an unfinished registration (module docstring).
        client.set_model_version_tag(registered_model_name, str(version), REGISTRATION_TAG,
                                     REGISTRATION_COMPLETE)

    log.info(
        "logged training run %s (experiment %r) at %s; registered %s v%d (val RMSE %.3f ppm)",
        run_id, experiment_name, redact_uri(tracking_uri), registered_model_name, version,
        validation["val_rmse"],
    )
    return ModelVersionInfo(name=registered_model_name, version=version, run_id=run_id,
                            torch_model_uri=torch_info.model_uri)


def figure_links(tracking_uri: str, run_id: str, figures: Sequence[Path]) -> list[tuple[str, str]]:
    """(name, URI) of the run's figures as logged under FIGURES_DIR, for a flow's report (the MLflow UI shows them too)."""
    from mlflow.tracking import MlflowClient

    from registry.store import FIGURES_DIR

    root = MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.artifact_uri
    return [(f.stem.replace("_", " "), f"{root}/{FIGURES_DIR}/{f.name}") for f in figures]
