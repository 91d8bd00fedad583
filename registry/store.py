"""Where models live in MLflow: the client for a tracking URI, artifact layout, ONNX download.

Shared by tracking (writes), promotion and champion (reads), so the artifact paths are named once.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import unquote

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
CHALLENGER = "challenger"

ONNX_ARTIFACT = "onnx/model.onnx"
SCALERS_ARTIFACT = "scalers.json"
FEATURES_ARTIFACT = "features.json"
FIGURES_DIR = "figures"
MODEL_NAME_IN_RUN = "model"  # log_model(name=...) of the registered (ONNX) flavour

_NOT_FOUND = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}


class RegistryError(RuntimeError):
    """The model registry does not hold what was asked for; the message says what to do."""


def client_for(tracking_uri: str) -> MlflowClient:
    # The registry URI is pinned to the tracking URI: otherwise MLflow falls back to the
    # MLFLOW_REGISTRY_URI environment variable and could register into another store.
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def artifact_root_for(tracking_uri: str) -> str | None:
    """<db dir>/mlartifacts (a file: URI) for a sqlite tracking DB, else None (server default)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = unquote(tracking_uri[len("sqlite:///"):].split("?", 1)[0])
    if not db or db == ":memory:":
        return None
    return (Path(db).expanduser().resolve().parent / "mlartifacts").as_uri()


def get_version(client: MlflowClient, name: str, version: int | str) -> ModelVersion:
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code in _NOT_FOUND:
            raise RegistryError(
                f"model version {name!r} v{version} does not exist in the model registry"
            ) from None
        raise


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding `alias`, or None when the model or the alias does not exist."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in _NOT_FOUND:
            return None
        raise


def download_onnx(client: MlflowClient, version: ModelVersion, destination: Path) -> Path:
    """Fetch the version's ONNX artifact to `destination` (a file path), atomically.

    Downloaded into a temporary folder beside the destination and renamed, so a concurrent
    reader or a killed download never leaves a truncated model.onnx in place."""
    if not version.run_id:
        raise RegistryError(
            f"model version {version.name!r} v{version.version} has no source run, so it has no "
            f"{ONNX_ARTIFACT}; register versions with registry.tracking.log_training_run"
        )
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=".download-") as tmp:
        try:
            local = client.download_artifacts(version.run_id, ONNX_ARTIFACT, dst_path=tmp)
        except (MlflowException, OSError) as exc:
            raise RegistryError(
                f"model version {version.name!r} v{version.version}: cannot download "
                f"{ONNX_ARTIFACT} from run {version.run_id}: {exc}"
            ) from exc
        os.replace(local, destination)
    return destination


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    return path


def copy_as(source: Path, destination: Path) -> Path:
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, destination)
    return destination
