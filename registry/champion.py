"""The model that makes the maps: whatever version holds the 'champion' alias right now.

Inference loads `models:/<registered model>@champion`. The alias is resolved on every call, so
moving it in the MLflow UI (manual promotion, rollback: move it back) changes the next map run
without restarting or redeploying anything. The registered version's model is the ONNX flavour
(registry.tracking); its model.onnx is downloaded once per version into
<cache_dir>/<version>/ (atomically: a whole directory renamed into place, checked against the
version's run id, since a recreated registry reuses version numbers). Versions registered before
the ONNX flavour (pytorch flavour) are served from their run's onnx/model.onnx artifact.

The cached file is checked at every load: its size and sha256 against the version's tags
recorded at registration (registry.tracking), or, for versions registered before those tags,
its size against the registry's artifact listing and that onnx parses it. A cached file that
does not match (truncated, damaged on disk) is logged as a WARNING naming it and fetched again
from the registry, atomically; a download that does not match either is an error.

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
from typing import Any

import mlflow.artifacts
import onnx
import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from models.onnx_session import read_metadata
from registry.redaction import redact_uri
from registry.store import (
    CHAMPION,
    ONNX_ARTIFACT,
    ONNX_SHA256_TAG,
    ONNX_SIZE_TAG,
    RegistryError,
    client_for,
    download_onnx,
    file_digest,
    model_download_uri,
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
    # maps of later days are anchored to recent observations (tasks/mapping/anchoring.py).
    train_last_day: date | None = None
    # How maps are made from the graph (models/onnx_export.py::mapping_metadata): background,
    # anomaly scale, daily-anomaly field; None for versions exported before the background.
    mapping: dict[str, Any] | None = None

    @property
    def model_uri(self) -> str:
        """The version that was loaded, pinned: models:/<name>/<version>."""
        return f"models:/{self.name}/{self.version}"


def _source(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / _SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _cached(directory: Path, run_id: str) -> bool:
    # A version number alone is not an identity: a recreated registry (new DB) reuses 1, 2, ...
    return (directory / _MODEL_FILE).is_file() and _source(directory).get("run_id") == run_id


_model_download_uri = model_download_uri


def _run_id(version: ModelVersion) -> str:
    # Every version this project registers comes from a run; one without names no artifacts to fetch.
    if not version.run_id:
        raise RegistryError(f"model version {version.name!r} v{version.version} has no run: no artifacts to fetch")
    return version.run_id


def _listed_size(client: MlflowClient, tracking_uri: str, version: ModelVersion, directory: Path,
                 flavor: str) -> int | None:
    """The size of the version's ONNX file in the registry's artifact listing (None if unlisted)."""
    label = f"{version.name!r} v{version.version}"
    try:
        if flavor == "onnx":
            data = _MODEL_FILE
            try:  # the cached MLmodel names the file the flavour stored (renamed to model.onnx here)
                mlmodel = yaml.safe_load((directory / _MLMODEL).read_text()) or {}
                data = str(mlmodel["flavors"]["onnx"].get("data") or _MODEL_FILE)
            except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
                pass
            listing = mlflow.artifacts.list_artifacts(artifact_uri=_model_download_uri(client, version),
                                                      tracking_uri=tracking_uri)
            wanted = data
        else:
            listing = client.list_artifacts(_run_id(version), ONNX_ARTIFACT.rsplit("/", 1)[0])
            wanted = ONNX_ARTIFACT
    except MlflowException as exc:
        raise RegistryError(f"model version {label}: cannot list its artifacts: {exc}") from exc
    for info in listing:
        if not info.is_dir and (info.path == wanted or info.path.endswith("/" + wanted)):
            return int(info.file_size) if info.file_size is not None else None
    return None


def _model_problem(client: MlflowClient, tracking_uri: str, version: ModelVersion, directory: Path,
                   flavor: str) -> str | None:
    """Why <directory>/model.onnx is not the version's registered model, or None when it is."""
    path = directory / _MODEL_FILE
    try:
        sha256, size = file_digest(path)
    except OSError as exc:
        return f"cannot be read: {exc}"
    tags = version.tags or {}
    if ONNX_SHA256_TAG in tags:
        want_size = tags.get(ONNX_SIZE_TAG)
        if want_size is not None and str(size) != str(want_size):
            return f"{size} bytes, the registered model has {want_size}"
        if sha256 != tags[ONNX_SHA256_TAG]:
            return f"sha256 {sha256}, the registered model has {tags[ONNX_SHA256_TAG]}"
        return None
    # Registered before the digest tags: the listing's size, and the file must parse.
    listed = _listed_size(client, tracking_uri, version, directory, flavor)
    if listed is not None and size != listed:
        return f"{size} bytes, the registry lists {listed}"
    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own DecodeError and friends
        return f"does not parse as an ONNX model: {type(exc).__name__}: {exc}"
    return None


def _registered_flavors(uri: str, tracking_uri: str, workdir: Path) -> dict[str, Any]:
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


def _place(staging: Path, destination: Path, run_id: str, replace: bool = False) -> None:
    """Rename the complete `staging` directory to `destination`: readers see the old model or
    the new one, never a part. An existing directory of another run is set aside first; one of
    the same run (a concurrent download won) is kept, unless `replace` (it is damaged)."""
    for _ in range(3):
        try:
            os.rename(staging, destination)  # also replaces an empty directory
            return
        except FileNotFoundError:
            raise
        except OSError:
            if _cached(destination, run_id) and not replace:
                return
            stale = destination.with_name(f".{destination.name}.stale-{uuid.uuid4().hex[:8]}")
            try:
                os.rename(destination, stale)
            except FileNotFoundError:
                continue
            shutil.rmtree(stale, ignore_errors=True)
    raise RegistryError(f"could not put the downloaded model in place at {destination}")


def _stamp(directory: Path) -> tuple[int, int] | None:
    try:
        stat = (directory / _SOURCE_FILE).stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def fetch_version_onnx(client: MlflowClient, tracking_uri: str, version: ModelVersion,
                       destination: str | Path) -> tuple[Path, str]:
    """The version's registered ONNX model as <destination>/model.onnx (+ source.json), downloaded
    unless already there for the same run; returns (path, flavour)."""
    destination = Path(destination)
    label = f"{version.name!r} v{version.version}"
    damaged = False
    if _cached(destination, _run_id(version)):
        # Caches written before the ONNX flavour was registered came from the run artifact.
        flavor = _source(destination).get("flavor", "run-artifact")
        problem = _model_problem(client, tracking_uri, version, destination, flavor)
        if problem is None:
            return destination / _MODEL_FILE, flavor
        log.warning("cached model %s of %s is damaged (%s): fetching it again from the registry",
                    destination / _MODEL_FILE, label, problem)
        damaged = True
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.dl-"))
    try:
        flavor = _stage(client, tracking_uri, version, staging)
        problem = _model_problem(client, tracking_uri, version, staging, flavor)
        if problem is not None:
            raise RegistryError(f"model version {label}: the {_MODEL_FILE} downloaded from the registry "
                                f"is not the registered model ({problem}); the registry's copy may be damaged")
        _place(staging, destination, _run_id(version), replace=damaged)
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
    stamp = _stamp(directory)
    onnx_path, flavor = fetch_version_onnx(client, tracking_uri, version, directory)
    log.info("models:/%s@%s -> version %s (run %s, %s flavour): %s %s", name, CHAMPION,
             version.version, version.run_id, flavor,
             "cached" if stamp is not None and stamp == _stamp(directory) else "downloaded to", onnx_path)
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
        mapping=meta.get("mapping"),
    )
