"""The model that makes the maps: whatever version holds the 'champion' alias right now.

Inference loads `models:/<registered model>@champion`. The alias is resolved on every call, so
moving it in the MLflow UI (manual promotion, rollback: move it back) changes the next map run
without restarting or redeploying anything. The registered version's model is the ONNX flavour
(registry.tracking); its model.onnx is downloaded once per version into
<cache_dir>/<version>/ (atomically: a whole directory renamed into place, checked against the
version's run id, since a recreated registry reuses version numbers). Versions registered before
the ONNX flavour (pytorch flavour) are served from their run's onnx/model.onnx artifact.

No torch here: a map-making worker needs mlflow, onnx, onnxruntime and numpy only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from datetime import date
from dataclasses import dataclass, field
from pathlib import Path

import mlflow.artifacts
import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from models.onnx_runtime import read_metadata
from registry.redaction import redact_uri
from registry.store import (
    CHAMPION,
    ONNX_ARTIFACT,
    RegistryError,
    client_for,
    download_onnx,
    version_by_alias,
)

log = logging.getLogger(__name__)

_SOURCE_FILE = "source.json"  # beside the cached model: which version and run it came from
_MODEL_FILE = "model.onnx"
_MLMODEL = "MLmodel"


class ChampionNotFoundError(RegistryError, LookupError):
    """The registered model does not exist or no version holds the 'champion' alias."""


@dataclass(frozen=True)
class ChampionModel:
    """metrics: the source run's final metric values (val_rmse, val_r2, ..., best_epoch).
    flavor: 'onnx' (the registered ONNX flavour) or 'run-artifact' (an older version registered
    in the pytorch flavour, served from its run's onnx/model.onnx)."""

    name: str
    version: int
    run_id: str
    onnx_path: Path
    feature_names: tuple[str, ...]
    feature_set_version: str
    metrics: dict[str, float] = field(default_factory=dict)
    flavor: str = "onnx"
    # The last day of the samples it was trained on (run param `train_last_day`), if recorded:
    # maps of later days are anchored to recent observations (tasks/anchoring.py).
    train_last_day: date | None = None

    @property
    def alias_uri(self) -> str:
        """The URI inference loads: models:/<name>@champion (resolved to `version` this time)."""
        return f"models:/{self.name}@{CHAMPION}"

    @property
    def model_uri(self) -> str:
        """The version that was loaded, pinned: models:/<name>/<version>."""
        return f"models:/{self.name}/{self.version}"


def _source(directory: Path) -> dict:
    try:
        return json.loads((directory / _SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _cached(directory: Path, run_id: str) -> bool:
    # A version number alone is not an identity: a recreated registry (new DB) reuses 1, 2, ...
    return (directory / _MODEL_FILE).is_file() and _source(directory).get("run_id") == run_id


def _model_download_uri(client: MlflowClient, version: ModelVersion) -> str:
    """Where the registered version's model files are (file:, s3:, mlflow-artifacts:, ...).

    Resolved with our own client: mlflow's models:/ artifact repository would look the version
    up through the process-global registry URI instead of this tracking URI."""
    uri = client.get_model_version_download_uri(version.name, str(version.version))
    if uri.startswith("models:/"):  # a logged model id (models:/m-...), not yet a location
        uri = client.get_logged_model(uri[len("models:/"):].strip("/")).artifact_location
    return uri.rstrip("/")


def _registered_flavors(uri: str, tracking_uri: str, workdir: Path) -> dict:
    """The `flavors` of the version's MLmodel file ({} when it has none)."""
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{uri}/{_MLMODEL}", dst_path=str(workdir), tracking_uri=tracking_uri)
    return (yaml.safe_load(Path(local).read_text()) or {}).get("flavors") or {}


def _stage(client: MlflowClient, tracking_uri: str, version: ModelVersion,
           staging: Path) -> str:
    """Download the version's ONNX model into `staging` (which becomes the cache directory);
    returns the flavour it came from."""
    label = f"{version.name!r} v{version.version}"
    try:
        uri = _model_download_uri(client, version)
        flavors = _registered_flavors(uri, tracking_uri, staging / ".mlmodel")
        if "onnx" in flavors:
            # The whole model directory: model.onnx, any external data files it references,
            # MLmodel and the requirements, for provenance. A few files, one of them large.
            model_dir = staging / ".model"
            local = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=str(model_dir), tracking_uri=tracking_uri))
            for item in local.iterdir():
                os.replace(item, staging / item.name)
            data = str(flavors["onnx"].get("data") or _MODEL_FILE)
            if data != _MODEL_FILE:
                os.replace(staging / data, staging / _MODEL_FILE)
            flavor = "onnx"
        else:
            log.info("%s is registered in the %s flavour, not ONNX: using its run's %s", label,
                     "/".join(sorted(flavors)) or "unknown", ONNX_ARTIFACT)
            download_onnx(client, version, staging / _MODEL_FILE)
            flavor = "run-artifact"
    except (MlflowException, OSError, KeyError, yaml.YAMLError) as exc:
        raise RegistryError(f"model version {label}: cannot download its ONNX model: "
                            f"{exc}") from exc
    finally:
        for scratch in (".mlmodel", ".model"):
            shutil.rmtree(staging / scratch, ignore_errors=True)
    if not (staging / _MODEL_FILE).is_file():
        raise RegistryError(f"model version {label} has no {_MODEL_FILE} in its registered model")
    (staging / _SOURCE_FILE).write_text(json.dumps({
        "name": version.name, "version": int(version.version), "run_id": version.run_id,
        "flavor": flavor, "model_uri": f"models:/{version.name}/{version.version}",
    }))
    return flavor


def _place(staging: Path, destination: Path, run_id: str) -> None:
    """Rename the complete `staging` directory to `destination`: readers see the old model or
    the new one, never a part. An existing directory of another run is set aside first; one of
    the same run (a concurrent download won) is kept."""
    for _ in range(3):
        try:
            os.rename(staging, destination)  # also replaces an empty directory
            return
        except FileNotFoundError:
            raise
        except OSError:
            if _cached(destination, run_id):
                return
            stale = destination.with_name(f".{destination.name}.stale-{uuid.uuid4().hex[:8]}")
            try:
                os.rename(destination, stale)
            except FileNotFoundError:
                continue
            shutil.rmtree(stale, ignore_errors=True)
    raise RegistryError(f"could not put the downloaded model in place at {destination}")


def fetch_version_onnx(client: MlflowClient, tracking_uri: str, version: ModelVersion,
                       destination: str | Path) -> tuple[Path, str]:
    """The version's registered ONNX model as <destination>/model.onnx (+ source.json), downloaded
    unless already there for the same run; returns (path, flavour)."""
    destination = Path(destination)
    if _cached(destination, version.run_id):
        # Caches written before the ONNX flavour was registered came from the run artifact.
        return destination / _MODEL_FILE, _source(destination).get("flavor", "run-artifact")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.dl-"))
    try:
        flavor = _stage(client, tracking_uri, version, staging)
        _place(staging, destination, version.run_id)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination / _MODEL_FILE, flavor


def load_champion(tracking_uri: str, name: str, cache_dir: str | Path) -> ChampionModel:
    """Resolve models:/<name>@champion now and return it with its ONNX file at
    cache_dir/<version>/model.onnx (downloaded only when not already cached)."""
    client = client_for(tracking_uri)
    version = version_by_alias(client, name, CHAMPION)
    if version is None:
        raise ChampionNotFoundError(
            f"registered model {name!r} has no '{CHAMPION}' version at "
            f"{redact_uri(tracking_uri)}: train and promote a model first, or set the alias "
            f"on a version in the MLflow UI"
        )
    if not version.run_id:
        raise RegistryError(
            f"{name!r} v{version.version} (champion) has no source run; it was not registered "
            "by registry.tracking.log_training_run"
        )
    directory = Path(cache_dir) / str(version.version)
    cached = _cached(directory, version.run_id)
    onnx_path, flavor = fetch_version_onnx(client, tracking_uri, version, directory)
    log.info("models:/%s@%s -> version %s (run %s, %s flavour): %s %s", name, CHAMPION,
             version.version, version.run_id, flavor, "cached" if cached else "downloaded to",
             onnx_path)
    meta = read_metadata(onnx_path)
    run = client.get_run(version.run_id)
    metrics = dict(run.data.metrics)
    last = run.data.params.get("train_last_day")
    return ChampionModel(
        name=name,
        version=int(version.version),
        run_id=version.run_id,
        onnx_path=onnx_path,
        feature_names=tuple(meta["feature_names"]),
        feature_set_version=meta["feature_set_version"],
        metrics=metrics,
        flavor=flavor,
        train_last_day=date.fromisoformat(last) if last else None,
    )
