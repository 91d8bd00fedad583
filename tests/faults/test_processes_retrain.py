"""Issue 10: a retrain killed mid-registration leaves no half-registered model version, and the
next retrain completes.

The child process trains a toy ResNet-LSTM and registers it through registry.tracking exactly as
the retrain flow does; it is killed with SIGKILL right after MLflow created the version, before
any of the version's tags (the ONNX sha256 and size the champion loader checks) were set.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from registry.tracking import REGISTRATION_COMPLETE, REGISTRATION_TAG, WRITER_TAG, writer_identity, writer_is_gone
from test_processes_support import REPO

MODEL = "faults-killed-retrain"

_RETRAIN = textwrap.dedent("""
    import logging, os, signal, sys
    from pathlib import Path
    import numpy as np
    from mlflow import MlflowClient
    from models.evaluation import regression_metrics
    from models.onnx_export import check_onnx_parity, export_onnx
    from models.training import TrainingConfig, train_resnet_lstm
    from registry.tracking import log_training_run

    logging.basicConfig(level=logging.INFO)  # as `xco2` configures it
    tracking_uri, name, workdir, mode = sys.argv[1:5]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 20)) * 5
    y = 410 + 0.4 * X[:, 0] - 0.2 * X[:, 1] + rng.normal(scale=0.1, size=300)
    model = train_resnet_lstm(X[:240], y[:240], X[240:], y[240:], [f"cov_{i:02d}" for i in range(20)],
                              "toy-v1", TrainingConfig(max_epochs=2, batch_size=64))
    onnx_path = export_onnx(model, Path(workdir) / "model.onnx")
    parity = check_onnx_parity(model, onnx_path, X[:50], batch_sizes=(7, 50))
    if mode == "killed":
        def killed(self, name, version, key, value):
            print("REGISTERED", version, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # as kill -9 / the OOM killer would, mid-registration
        MlflowClient.set_model_version_tag = killed
    info = log_training_run(tracking_uri, "faults-retrain", name, model, onnx_path,
                            metrics=regression_metrics(y, model.predict(X)), onnx_parity_max_abs_ppm=parity)
    print("VERSION", info.version, info.run_id, flush=True)
""")


def _retrain(tracking_uri: str, workdir, mode: str) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([sys.executable, "-c", _RETRAIN, tracking_uri, MODEL, str(workdir), mode],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env=env)


def _line(out: str, word: str) -> list[str]:
    return next(line.split()[1:] for line in out.splitlines() if line.startswith(word + " "))


def test_writer_identity_tells_dead_and_reused_processes():
    me = writer_identity()
    assert not writer_is_gone(me)
    host, pid, ticks = me.rsplit(":", 2)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert writer_is_gone(f"{host}:{dead.pid}:1")
    assert writer_is_gone(f"{host}:{pid}:{int(ticks) + 1}")  # the pid now names a younger process
    assert not writer_is_gone(f"another-{socket.gethostname()}:{dead.pid}:1")  # cannot tell: left alone
    assert not writer_is_gone("not a writer")


@pytest.mark.slow
def test_a_retrain_killed_mid_registration_leaves_no_partial_version(tracking_uri, tmp_path):
    killed = _retrain(tracking_uri, tmp_path / "killed", "killed")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (partial,) = _line(killed.stdout, "REGISTERED")
    client = MlflowClient(tracking_uri)
    half = client.get_model_version(MODEL, partial)
    assert REGISTRATION_TAG not in half.tags  # the state a kill leaves: a version without its tags
    assert client.get_run(half.run_id).info.status == "RUNNING"
    assert WRITER_TAG in client.get_run(half.run_id).data.tags

    again = _retrain(tracking_uri, tmp_path / "again", "normal")
    assert again.returncode == 0, again.stderr[-3000:]
    version, run_id = _line(again.stdout, "VERSION")
    with pytest.raises(MlflowException):
        client.get_model_version(MODEL, partial)
    assert client.get_run(half.run_id).info.status == "KILLED"
    done = client.get_model_version(MODEL, version)
    assert done.tags[REGISTRATION_TAG] == REGISTRATION_COMPLETE and done.run_id == run_id
    assert [str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'")] == [version]

    # The rest of the retrain: the gate promotes it and the daily flow can load it.
    from registry.champion import load_champion
    from registry.promotion import promote

    rng = np.random.default_rng(5)
    X = rng.normal(size=(100, 20)) * 5
    y = 410 + 0.4 * X[:, 0] - 0.2 * X[:, 1]
    assert promote(tracking_uri, MODEL, version, X, y).alias == "champion"
    champion = load_champion(tracking_uri, MODEL, tmp_path / "models")
    assert str(champion.version) == version and champion.onnx_path.is_file()
