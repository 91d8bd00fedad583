"""Issue 10: the MLflow tracking server down during a run (fast; the real server and the daily
deployment are in tests/test_stack.py, slow).

A run gives up on a server that does not answer within seconds (refused) or a bounded time (no
answer), with one message naming the tracking URI, and the command line exits 1 with it as its
last line instead of a traceback.
"""

from __future__ import annotations

import socket
import time
from contextlib import nullcontext

import pytest

from registry.champion import load_champion
from registry.store import HTTP_BOUNDS, RegistryUnavailableError, client_for


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def bounded(monkeypatch):
    """The bounds client_for sets, from a clean slate (another test may have set them already)."""
    for variable in HTTP_BOUNDS:
        monkeypatch.delenv(variable, raising=False)


def test_a_refused_server_fails_the_champion_lookup_in_seconds_naming_the_uri(bounded, tmp_path):
    uri = _closed_port_url()
    t0 = time.monotonic()
    with pytest.raises(RegistryUnavailableError) as err:
        load_champion(uri, "xco2-resnet-lstm", tmp_path / "models")
    took = time.monotonic() - t0
    assert took < 20, f"gave up after {took:.0f} s"  # MLflow's defaults: about 4 minutes
    message = str(err.value)
    assert uri in message and "does not answer" in message and "connection refused" in message
    assert err.value.__cause__ is None and err.value.__suppress_context__  # one message, no chain


def test_a_silent_server_fails_within_the_request_timeout(bounded, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")  # the environment wins over the defaults
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)  # accepts, never answers
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(RegistryUnavailableError, match="does not answer") as err:
            load_champion(uri, "xco2-resnet-lstm", tmp_path / "models")
    assert time.monotonic() - t0 < 20 and uri in str(err.value)


def test_client_for_bounds_http_calls_without_overriding_the_environment(bounded, monkeypatch):
    import os

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    client_for("http://127.0.0.1:5000")
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_BOUNDS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES

    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 2  # what MLflow reads at each request


def test_the_command_line_ends_with_the_message(bounded, monkeypatch, tmp_path, capsys):
    """`xco2 retrain` against a tracking server that dies after the command started: exit 1, the
    URI on the last line of stderr. (One already down at the start is named by the startup probe,
    exit 2: tests/faults/test_config_fail_fast.py.)"""
    from flows import cli

    uri = _closed_port_url()
    monkeypatch.setattr(cli, "_check_registry_first", lambda args: None)  # it answered at the start
    monkeypatch.setenv("XCO2_MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("XCO2_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("XCO2_STACK_DIR", str(tmp_path / "no-stack"))
    # The command's first registry call, without training first; no Prefect server needed for it.
    monkeypatch.setattr(cli, "_cmd_retrain", lambda args: load_champion(
        cli.load_settings().tracking_uri, "xco2-resnet-lstm", tmp_path / "models"))
    monkeypatch.setattr(cli, "_prefect_api_for", lambda args: nullcontext())
    assert cli.main(["retrain"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("xco2 retrain: the MLflow tracking server") and uri in last
