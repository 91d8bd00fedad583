"""Issue 10 case 7: a damaged cached champion model is detected and fetched again.

The registered model.onnx's sha256 and size are recorded as model-version tags at registration;
load_champion checks the cache at <cache>/<version>/model.onnx against them at every load, and
a mismatch logs a WARNING naming the file and re-downloads it atomically. Versions registered
before those tags are checked against the artifact listing's size and by parsing the file.
(The daily run mapping after such a repair is in test_publish_archive_health.py.)
"""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before mlflow is imported

import hashlib  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from models.evaluation import regression_metrics  # noqa: E402
from models.onnx_export import check_onnx_parity, export_onnx  # noqa: E402
from models.onnx_session import open_session, predict_batched  # noqa: E402
from models.training import TrainingConfig, train_resnet_lstm  # noqa: E402
from registry.champion import load_champion  # noqa: E402
from registry.store import ONNX_SHA256_TAG, ONNX_SIZE_TAG, RegistryError, model_download_uri  # noqa: E402
from registry.tracking import log_training_run  # noqa: E402

FEATURES = [f"f{i:02d}" for i in range(12)]
MODEL = "faults-publish-champion"


def toy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(FEATURES))) * 3
    return X, 410 + 0.5 * X[:, 0] + rng.normal(scale=0.1, size=n)


@pytest.fixture(scope="module")
def champion_version(tracking_uri, tmp_path_factory):
    """One tiny model registered as `champion`; returns (client, trained model, version)."""
    X, y = toy(240, seed=0)
    trained = train_resnet_lstm(X[:200], y[:200], X[200:], y[200:], FEATURES, "toy-faults",
                                TrainingConfig(max_epochs=2, batch_size=64))
    workdir = tmp_path_factory.mktemp("champion-export")
    onnx_path = export_onnx(trained, workdir / "model.onnx")
    parity = check_onnx_parity(trained, onnx_path, X[:20], batch_sizes=(20,))
    info = log_training_run(tracking_uri, "faults-publish", MODEL, trained, onnx_path,
                            metrics=regression_metrics(y, trained.predict(X)), onnx_parity_max_abs_ppm=parity)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.set_registered_model_alias(MODEL, "champion", str(info.version))
    return client, trained, info.version


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_registration_records_the_registered_files_digest(champion_version, tracking_uri, tmp_path):
    client, _, version = champion_version
    tags = client.get_model_version(MODEL, str(version)).tags
    champion = load_champion(tracking_uri, MODEL, tmp_path)
    assert tags[ONNX_SHA256_TAG] == sha256(champion.onnx_path)
    assert int(tags[ONNX_SIZE_TAG]) == champion.onnx_path.stat().st_size


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped", "emptied"])
def test_a_damaged_cached_model_is_fetched_again(champion_version, tracking_uri, tmp_path, caplog, damage):
    client, trained, version = champion_version
    good = load_champion(tracking_uri, MODEL, tmp_path)
    good_bytes = good.onnx_path.read_bytes()
    data = bytearray(good_bytes)
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "bit-flipped":  # same size: only the digest tells
        data[len(data) // 2] ^= 0x01
    else:
        data = bytearray()
    good.onnx_path.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger="registry.champion"):
        healed = load_champion(tracking_uri, MODEL, tmp_path)

    assert healed.onnx_path == good.onnx_path and healed.onnx_path.read_bytes() == good_bytes
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(good.onnx_path) in w and "damaged" in w for w in warnings), warnings
    assert sorted(p.name for p in tmp_path.iterdir()) == [str(version)]  # no staging or stale leftovers
    X, _ = toy(16, seed=5)
    session, _ = open_session(healed.onnx_path, prefer_cuda=False)
    np.testing.assert_allclose(predict_batched(session, X, 8), trained.predict(X), atol=1e-3)


def test_a_sound_cache_is_not_downloaded_again(champion_version, tracking_uri, tmp_path):
    first = load_champion(tracking_uri, MODEL, tmp_path)
    stamp = first.onnx_path.stat().st_mtime_ns, first.onnx_path.stat().st_ino
    again = load_champion(tracking_uri, MODEL, tmp_path)
    assert (again.onnx_path.stat().st_mtime_ns, again.onnx_path.stat().st_ino) == stamp


def test_versions_registered_before_the_digest_tags_are_checked_by_size_and_parse(
        champion_version, tracking_uri, tmp_path, caplog):
    client, _, version = champion_version
    tags = client.get_model_version(MODEL, str(version)).tags
    client.delete_model_version_tag(MODEL, str(version), ONNX_SHA256_TAG)
    client.delete_model_version_tag(MODEL, str(version), ONNX_SIZE_TAG)
    try:
        good = load_champion(tracking_uri, MODEL, tmp_path)
        good_bytes = good.onnx_path.read_bytes()
        good.onnx_path.write_bytes(good_bytes[:-100])
        with caplog.at_level(logging.WARNING, logger="registry.champion"):
            healed = load_champion(tracking_uri, MODEL, tmp_path)
        assert healed.onnx_path.read_bytes() == good_bytes
        assert any("the registry lists" in r.getMessage() for r in caplog.records)
    finally:
        for key in (ONNX_SHA256_TAG, ONNX_SIZE_TAG):
            client.set_model_version_tag(MODEL, str(version), key, tags[key])


def test_a_damaged_model_in_the_registry_itself_is_a_clear_error(champion_version, tracking_uri, tmp_path):
    """When the registry's own copy does not match its recorded digest, re-downloading cannot
    help: say so, naming the version, rather than serve it."""
    client, _, version = champion_version
    mv = client.get_model_version(MODEL, str(version))
    stored = Path(model_download_uri(client, mv).removeprefix("file://")) / "model.onnx"
    original = stored.read_bytes()
    stored.write_bytes(original[:-10])
    try:
        with pytest.raises(RegistryError, match=rf"'{MODEL}' v{version}: the model.onnx downloaded from the "
                                                r"registry is not the registered model \(\d+ bytes, the registered"):
            load_champion(tracking_uri, MODEL, tmp_path)
        assert list(tmp_path.iterdir()) == []  # nothing cached
    finally:
        stored.write_bytes(original)
