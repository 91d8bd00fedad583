"""Champion/challenger: a new version takes the 'champion' alias only by beating the current one.

Both ONNX exports are scored on the same evaluation data at decision time (the recorded val_rmse of
two runs were measured on different validation splits, so they cannot be compared). The decision
and the numbers are written as tags on both versions, so the registry UI shows why. Aliases, not
the deprecated stages. Not atomic against a concurrent promotion of the same model.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from models.evaluation import regression_metrics
from models.onnx_session import open_session, predict_batched, read_metadata
from registry.champion import fetch_version_onnx
from registry.redaction import redact_uri

if TYPE_CHECKING:  # only the annotations name pandas; callers hand a DataFrame or an array
    import pandas as pd
from registry.store import (
    CHALLENGER,
    CHAMPION,
    CHAMPION_NETWORK_TAG,
    NETWORK_IN_MAP_TAG,
    RegistryError,
    client_for,
    get_version,
    version_by_alias,
)

log = logging.getLogger(__name__)

_EVAL_BATCH = 65536


@dataclass(frozen=True)
class PromotionDecision:
    """alias: what the evaluated version got ('champion' or 'challenger');
    champion_version: the champion after the decision; champion_rmse: the previous champion's
    RMSE on the evaluation data (None when there was no champion)."""

    alias: str
    champion_version: int
    challenger_rmse: float
    champion_rmse: float | None
    reason: str
    version: int = 0
    previous_champion_version: int | None = None

    @property
    def promoted(self) -> bool:
        return self.alias == CHAMPION


def _features_for(X_eval: pd.DataFrame | np.ndarray, feature_names: list[str], label: str,
                  default_names: list[str]) -> np.ndarray:
    """The evaluation matrix in the column order this model expects.

    A DataFrame is matched by column name, so two versions with different feature sets can both
    be scored; a bare array is taken to be in the order of the version being promoted."""
    if hasattr(X_eval, "columns"):
        # Duck-typed (any frame with named columns); mypy's hasattr narrowing keeps ndarray too.
        frame = cast("pd.DataFrame", X_eval)
        missing = [n for n in feature_names if n not in frame.columns]
        if missing:
            raise RegistryError(
                f"{label} needs features the evaluation data lacks: {', '.join(missing[:10])}"
            )
        return frame[feature_names].to_numpy(dtype=np.float32)
    X = np.asarray(X_eval)
    if feature_names != default_names:
        raise RegistryError(
            f"{label} uses different features than the version being promoted; pass X_eval as "
            "a pandas DataFrame with named columns so each model gets its own features"
        )
    if X.ndim != 2 or X.shape[1] != len(feature_names):
        raise RegistryError(
            f"X_eval has shape {X.shape}; {label} expects [n, {len(feature_names)}]"
        )
    return X


def _data_fingerprint(X: pd.DataFrame | np.ndarray, y: np.ndarray) -> str:
    digest = hashlib.sha256()
    values = X.to_numpy() if hasattr(X, "to_numpy") else np.asarray(X)
    digest.update(np.ascontiguousarray(values).tobytes())
    digest.update(np.ascontiguousarray(y).tobytes())
    return digest.hexdigest()[:16]


def _fetch_onnx(client: MlflowClient, tracking_uri: str, version: ModelVersion,
                workdir: Path) -> Path:
    # The registered model itself (ONNX flavour), the very file inference will load as champion.
    return fetch_version_onnx(client, tracking_uri, version, workdir / str(version.version))[0]


def _score(version: ModelVersion, onnx_path: Path, X_eval: pd.DataFrame | np.ndarray, y_eval: np.ndarray,
           candidate_names: list[str]) -> float:
    """RMSE (ppm) of a version's ONNX export on the evaluation data."""
    names = list(read_metadata(onnx_path)["feature_names"])
    label = f"{version.name} v{version.version}"
    X = _features_for(X_eval, names, label, candidate_names)
    session, provider = open_session(onnx_path)
    predicted = predict_batched(session, X, batch_size=_EVAL_BATCH)
    if not np.isfinite(predicted).all():
        # Scored as infinitely bad rather than failing: a broken model must not be promoted,
        # and a broken champion should be replaceable.
        log.warning("%s predicts non-finite XCO2 on the evaluation data", label)
        return float("inf")
    rmse = regression_metrics(y_eval, predicted)["rmse"]
    log.info("%s: RMSE %.4f ppm on %d evaluation samples (%s)", label, rmse, len(y_eval),
             provider)
    return rmse


def _tag(client: MlflowClient, version: ModelVersion, tags: dict[str, Any]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(version.name, str(version.version), key, str(value))


def promote(
    tracking_uri: str,
    name: str,
    version: int | str,
    X_eval: pd.DataFrame | np.ndarray,
    y_eval: npt.ArrayLike,
    margin_ppm: float = 0.0,
) -> PromotionDecision:
    """Give `version` the 'champion' alias when it beats the current champion's RMSE on
    (X_eval, y_eval) by more than `margin_ppm`, else the 'challenger' alias. The first version
    of a model becomes champion. X_eval: raw covariates, a DataFrame (columns by feature name)
    or an array in the new version's feature order."""
    if not margin_ppm >= 0:
        raise ValueError(f"margin_ppm must be >= 0, got {margin_ppm}")
    y = np.asarray(y_eval, dtype=np.float64)
    if y.ndim != 1 or y.shape[0] == 0 or len(X_eval) != y.shape[0]:
        raise ValueError(
            f"evaluation data: need matching non-empty X_eval and y_eval, got {len(X_eval)} "
            f"rows and y of shape {y.shape}"
        )
    client = client_for(tracking_uri)
    candidate = get_version(client, name, version)
    champion = version_by_alias(client, name, CHAMPION)
    decided_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    fingerprint = _data_fingerprint(X_eval, y)

    with tempfile.TemporaryDirectory(prefix="xco2-promotion-") as tmp:
        workdir = Path(tmp)
        candidate_onnx = _fetch_onnx(client, tracking_uri, candidate, workdir)
        candidate_names = list(read_metadata(candidate_onnx)["feature_names"])
        candidate_rmse = _score(candidate, candidate_onnx, X_eval, y, candidate_names)
        champion_rmse: float | None = None
        if champion is None:
            promoted = True
            reason = "no champion yet: the first version becomes champion"
        elif str(champion.version) == str(candidate.version):
            promoted = True
            champion_rmse = candidate_rmse
            reason = "already the champion"
        else:
            champion_onnx = _fetch_onnx(client, tracking_uri, champion, workdir)
            champion_rmse = _score(champion, champion_onnx, X_eval, y, candidate_names)
            promoted = candidate_rmse < champion_rmse - margin_ppm
            relation = "beats" if promoted else "does not beat"
            reason = (
                f"RMSE {candidate_rmse:.4f} ppm {relation} champion v{champion.version} "
                f"{champion_rmse:.4f} ppm by more than {margin_ppm:g} ppm "
                f"({len(y)} evaluation samples)"
            )

    alias = CHAMPION if promoted else CHALLENGER
    client.set_registered_model_alias(name, alias, str(candidate.version))
    if promoted and CHALLENGER in (candidate.aliases or []):
        # A challenger that is now champion would otherwise carry both aliases.
        client.delete_registered_model_alias(name, CHALLENGER)
    if promoted:
        in_map = (candidate.tags or {}).get(NETWORK_IN_MAP_TAG, "not recorded (registered before the tag existed)")
        client.set_registered_model_tag(name, CHAMPION_NETWORK_TAG, f"v{candidate.version}: {in_map}")
    previous = int(champion.version) if champion is not None else None
    new_champion = int(candidate.version) if promoted or previous is None else previous

    _tag(client, candidate, {
        "promotion_decision": alias,
        "promotion_reason": reason,
        "promotion_eval_rmse": f"{candidate_rmse:.6g}",
        "promotion_compared_with": f"v{previous}" if previous is not None else "none",
        "promotion_champion_eval_rmse": (
            f"{champion_rmse:.6g}" if champion_rmse is not None else "none"),
        "promotion_margin_ppm": f"{margin_ppm:g}",
        "promotion_eval_n": len(y),
        "promotion_eval_data_sha256": fingerprint,
        "promotion_decided_at": decided_at,
    })
    if champion is not None and previous != int(candidate.version):
        prefix = f"promotion_vs_v{candidate.version}"
        _tag(client, champion, {
            f"{prefix}_outcome": "replaced" if promoted else "kept",
            f"{prefix}_eval_rmse": f"{champion_rmse:.6g}",
            f"{prefix}_challenger_eval_rmse": f"{candidate_rmse:.6g}",
            f"{prefix}_eval_data_sha256": fingerprint,
            f"{prefix}_decided_at": decided_at,
        })

    log.info("promotion of %s v%s at %s: %s (%s)", name, candidate.version,
             redact_uri(tracking_uri), alias, reason)
    return PromotionDecision(
        alias=alias,
        champion_version=new_champion,
        challenger_rmse=candidate_rmse,
        champion_rmse=champion_rmse,
        reason=reason,
        version=int(candidate.version),
        previous_champion_version=previous,
    )


def tag_gate(tracking_uri: str, model_name: str, version: int, previous: int | None, gate: str, n: int,
             margin_ppm: float) -> None:
    """Say on both versions which evaluation data the promotion compared them on."""
    client = MlflowClient(tracking_uri=tracking_uri)
    for v in {version, previous} - {None}:
        client.set_model_version_tag(model_name, str(v), f"promotion_v{version}_holdout",
                                     f"{gate}, N {n}, margin {margin_ppm:g} ppm")
