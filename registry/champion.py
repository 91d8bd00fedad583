"""The model that makes the maps: whatever version holds the 'champion' alias right now.

The alias is resolved on every call, so moving it in the MLflow UI (rollback, manual promotion)
changes the next map run without redeploying anything. The ONNX file is cached per version.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from models.onnx_runtime import read_metadata
from registry.redaction import redact_uri
from registry.store import CHAMPION, RegistryError, client_for, download_onnx, version_by_alias

log = logging.getLogger(__name__)

_SOURCE_FILE = "source.json"  # beside the cached model: which run it came from


class ChampionNotFoundError(RegistryError, LookupError):
    """The registered model does not exist or no version holds the 'champion' alias."""


@dataclass(frozen=True)
class ChampionModel:
    """metrics: the source run's final metric values (val_rmse, val_r2, ..., best_epoch)."""

    name: str
    version: int
    run_id: str
    onnx_path: Path
    feature_names: tuple[str, ...]
    feature_set_version: str
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _cached(onnx_path: Path, run_id: str) -> bool:
    # A version number alone is not an identity: a recreated registry (new DB) reuses 1, 2, ...
    source = onnx_path.parent / _SOURCE_FILE
    if not (onnx_path.is_file() and source.is_file()):
        return False
    try:
        return json.loads(source.read_text()).get("run_id") == run_id
    except (OSError, ValueError):
        return False


def load_champion(tracking_uri: str, name: str, cache_dir: str | Path) -> ChampionModel:
    """Resolve name@champion now and return it with its ONNX file at
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
    onnx_path = Path(cache_dir) / str(version.version) / "model.onnx"
    if _cached(onnx_path, version.run_id):
        log.debug("champion %s v%s: using cached %s", name, version.version, onnx_path)
    else:
        download_onnx(client, version, onnx_path)
        (onnx_path.parent / _SOURCE_FILE).write_text(
            json.dumps({"name": name, "version": int(version.version), "run_id": version.run_id})
        )
        log.info("champion %s v%s: downloaded ONNX to %s", name, version.version, onnx_path)
    meta = read_metadata(onnx_path)
    metrics = dict(client.get_run(version.run_id).data.metrics)
    return ChampionModel(
        name=name,
        version=int(version.version),
        run_id=version.run_id,
        onnx_path=onnx_path,
        feature_names=tuple(meta["feature_names"]),
        feature_set_version=meta["feature_set_version"],
        metrics=metrics,
    )
