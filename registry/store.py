"""Where models live in MLflow: the client for a tracking URI, artifact layout, ONNX download.

Shared by tracking (writes), promotion and champion (reads), so the artifact paths are named once.
"""

from __future__ import annotations

import hashlib
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

# Model-version tags recording the registered model.onnx at registration, so a cached copy can be
# checked at every load (registry.champion) without downloading it again.
ONNX_SHA256_TAG = "onnx_sha256"
ONNX_SIZE_TAG = "onnx_size_bytes"
# The network anomaly's share in a version's maps (models/holdouts.py::NetworkShare), as a number and
# in plain words, on each version (registry.tracking); the champion's reading also on the registered
# model (registry.promotion), so its page says whether the maps use the network.
NETWORK_SHARE_TAG = "network_share"
NETWORK_IN_MAP_TAG = "network_in_map"
CHAMPION_NETWORK_TAG = "champion_network_in_map"

_NOT_FOUND = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}

# Bounds of MLflow's HTTP calls (MLflow reads these variables at every request). Its defaults, 7
# retries with a doubling back-off and 120 s per request, keep a daily run waiting for minutes on
# a tracking server that is down; these give up within seconds on a refused connection and after
# at most 3 x 30 s on a server that accepts but never answers. Values set in the environment win.
HTTP_BOUNDS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


class RegistryError(RuntimeError):
    """The model registry does not hold what was asked for; the message says what to do."""


class RegistryUnavailableError(RegistryError):
    """The tracking server did not answer, after the bounded retries."""


def client_for(tracking_uri: str) -> MlflowClient:
    if tracking_uri.startswith(("http://", "https://")):
        for variable, value in HTTP_BOUNDS.items():
            os.environ.setdefault(variable, value)
    # The registry URI is pinned to the tracking URI: otherwise MLflow falls back to the
    # MLFLOW_REGISTRY_URI environment variable and could register into another store.
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def unavailable(exc: BaseException, tracking_uri: str) -> RegistryUnavailableError | None:
    """A RegistryUnavailableError naming the server when `exc` is an HTTP request to it that
    failed (refused, timed out, retries used up), else None (the server answered)."""
    import requests

    from registry.redaction import redact_uri

    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen and not isinstance(cause, requests.RequestException):
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    text = str(cause)
    why = ("connection refused" if "refused" in text.lower() else
           "no answer in time" if isinstance(cause, requests.Timeout) or "timed out" in text.lower() else
           type(cause).__name__)
    tries = 1 + int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7"))
    return RegistryUnavailableError(
        f"the MLflow tracking server {redact_uri(tracking_uri)} does not answer ({why}, {tries} tries): "
        "start it (`make up` starts what of the stack is missing; `make status` shows what runs) or point "
        "XCO2_MLFLOW_TRACKING_URI at a running one; the next run retries")


def _raise_if_unavailable(client: MlflowClient, exc: MlflowException) -> None:
    down = unavailable(exc, client.tracking_uri)
    if down is not None:
        raise down from None


def artifact_root_for(tracking_uri: str) -> str | None:
    """<db dir>/mlartifacts (a file: URI) for a sqlite tracking DB, else None (server default)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = unquote(tracking_uri[len("sqlite:///"):].split("?", 1)[0])
    if not db or db == ":memory:":
        return None
    return (Path(db).expanduser().resolve().parent / "mlartifacts").as_uri()


def file_digest(path: Path | str) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def model_download_uri(client: MlflowClient, version: ModelVersion) -> str:
    """Where the registered version's model files are (file:, s3:, mlflow-artifacts:, ...).

    Resolved with our own client: mlflow's models:/ artifact repository would look the version
    up through the process-global registry URI instead of this tracking URI."""
    uri = client.get_model_version_download_uri(version.name, str(version.version))
    if uri.startswith("models:/"):  # a logged model id (models:/m-...), not yet a location
        uri = client.get_logged_model(uri[len("models:/"):].strip("/")).artifact_location
    return uri.rstrip("/")


def get_version(client: MlflowClient, name: str, version: int | str) -> ModelVersion:
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code in _NOT_FOUND:
            raise RegistryError(
                f"model version {name!r} v{version} does not exist in the model registry"
            ) from None
        _raise_if_unavailable(client, exc)
        raise


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding `alias`, or None when the model or the alias does not exist."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in _NOT_FOUND:
            return None
        _raise_if_unavailable(client, exc)
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
