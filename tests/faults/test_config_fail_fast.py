"""Issue 21, item 5: bad settings stop the command at its start, exit 2, one line naming the
setting: a malformed MLflow tracking URI, an http(s) one whose server takes no connection (a
short probe, not MLflow's retries), a source=local directory that does not exist (not the pull's
retries), and a grid step that gives more cells than a day's mapping can hold."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager, nullcontext
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tasks.gridding.geometry import Grid
from tasks.settings import (
    MAX_GRID_CELLS,
    MLFLOW_REGISTRY_SCHEMES,
    TRACKING_PROBE_TIMEOUT_S,
    ConfigError,
    Region,
    grid_size,
    load_settings,
)


@pytest.fixture
def command_env(clean_env, tmp_path):
    """A data directory of the test's own and no running stack to join."""
    clean_env.setenv("XCO2_DATA_DIR", str(tmp_path / "data"))
    clean_env.setenv("XCO2_STACK_DIR", str(tmp_path / "no-stack"))
    return clean_env


@pytest.fixture
def no_flow(monkeypatch):
    """A command that gets past its startup checks fails the test: no Prefect server, no flow."""
    from flows import cli

    def started(args):
        raise AssertionError(f"xco2 {args.command} started although a setting is bad")

    monkeypatch.setattr(cli, "_prefect_api_for", started)
    return cli


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


@pytest.mark.parametrize("command", [["config"], ["daily", "--end", "2020-06-01"], ["report", "--start",
                                     "2020-06-01", "--end", "2020-06-02"]])
def test_an_absurd_grid_step_stops_every_command(command_env, no_flow, capsys, command):
    command_env.setenv("XCO2_GRID_STEP", "1e-6")  # 2.5e11 cells over Sichuan's box... and more
    assert no_flow.main(command) == 2
    line = _one_line(capsys)
    assert "grid_step" in line and "XCO2_GRID_STEP" in line and f"{MAX_GRID_CELLS:,}" in line


def test_the_grid_limit_counts_the_cells_the_grid_will_have(clean_env):
    # clean_env: not the checkout's ./xco2-data, whose record (after `make demo`) names a smaller region
    for region, step in [(Region(), 0.01), (Region(), 0.0037), (Region(name="x", west=-1.005, south=0.2, east=0.5,
                                                                          north=0.71, boundary="none"), 0.05)]:
        grid = Grid.for_region(region, step)
        assert grid_size(region, step) == (grid.nx, grid.ny)
    assert load_settings(grid_step=0.001).grid_step == 0.001  # Sichuan at 100 m: 131 million cells, allowed
    with pytest.raises(ConfigError, match="grid_step"):
        load_settings(grid_step=0.0005)


@pytest.mark.parametrize("uri, why", [
    ("garbage://x", "scheme 'garbage'"),
    ("sqlite://relative.db", "sqlite:///"),
    ("http://", "needs a host"),
    ("http://mlflow:notaport", "not a URI"),
    ("file:///srv/ml runs", "spaces"),
])
def test_a_malformed_tracking_uri_stops_the_command(command_env, no_flow, capsys, uri, why):
    command_env.setenv("XCO2_MLFLOW_TRACKING_URI", uri)
    assert no_flow.main(["retrain"]) == 2
    line = _one_line(capsys)
    assert "mlflow_tracking_uri" in line and "XCO2_MLFLOW_TRACKING_URI" in line and why in line


def test_a_malformed_tracking_uri_keeps_its_password_out_of_the_message(clean_env):
    clean_env.setenv("XCO2_MLFLOW_TRACKING_URI", "garbage://ops:s3cret@db.example/mlflow")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "s3cret" not in str(caught.value) and "garbage://ops:***@db.example/mlflow" in str(caught.value)


@pytest.mark.parametrize("uri", ["sqlite:////srv/xco2/mlflow.db", "sqlite:///mlflow.db", "http://mlflow:5000",
                                 "https://user:token@mlflow.example.org", "postgresql://u:pw@db:5432/mlflow",
                                 "postgresql+psycopg2://u@db/mlflow", "mysql://u@db/m", "file:///srv/mlruns",
                                 "/srv/mlruns", "databricks"])
def test_usable_tracking_uris_are_accepted(clean_env, uri):
    assert load_settings(mlflow_tracking_uri=uri).tracking_uri == uri


def test_the_schemes_are_mlflows_own():
    from mlflow.tracking._model_registry.utils import _get_store_registry

    assert set(MLFLOW_REGISTRY_SCHEMES) == set(_get_store_registry()._registry)


def test_an_unreachable_tracking_server_is_named_at_once(command_env, no_flow, capsys):
    uri = _closed_port_url()
    command_env.setenv("XCO2_MLFLOW_TRACKING_URI", uri)
    assert no_flow.main(["retrain"]) == 2
    line = _one_line(capsys)
    assert line.startswith("xco2: mlflow_tracking_uri (XCO2_MLFLOW_TRACKING_URI): the MLflow tracking server")
    assert uri in line and "connection refused" in line


def test_the_probe_is_one_short_request(command_env, no_flow, capsys, monkeypatch):
    """A server that never answers: one request with the probe's timeout (MLflow's own defaults
    retry for minutes); the message says how long it was given."""
    import requests

    calls = []

    def silent(url, timeout=None, **kwargs):
        calls.append((url, timeout))
        raise requests.Timeout("timed out")

    monkeypatch.setattr(requests, "get", silent)
    command_env.setenv("XCO2_MLFLOW_TRACKING_URI", "http://mlflow.example.org:5000")
    assert no_flow.main(["daily", "--end", "2020-06-01"]) == 2
    assert calls == [("http://mlflow.example.org:5000/health", (TRACKING_PROBE_TIMEOUT_S,) * 2)]
    assert TRACKING_PROBE_TIMEOUT_S <= 2
    line = _one_line(capsys)
    assert "no answer" in line and f"probed for {TRACKING_PROBE_TIMEOUT_S:g} s" in line


@contextmanager
def _http_server(status: int, body: bytes = b"OK", hang: bool = False):
    """A loopback HTTP server answering every GET with `status` (or taking the connection and
    saying nothing, as a firewall or a stuck service may)."""
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            if hang:
                release.wait(10)
                return
            self.send_response(status)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        release.set()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status, hang, why", [(404, False, "HTTP 404 from its /health"), (0, True, "no answer")])
def test_a_port_that_takes_the_connection_but_is_not_mlflow_is_named_at_once(command_env, no_flow, capsys,
                                                                            status, hang, why):
    # What a sandbox's or a firewall's catch-all, or another service on the port, looks like.
    with _http_server(status, b"", hang=hang) as uri:
        command_env.setenv("XCO2_MLFLOW_TRACKING_URI", uri)
        t0 = time.monotonic()
        assert no_flow.main(["backfill", "--stale"]) == 2
        assert time.monotonic() - t0 < 2 + 0.5
    line = _one_line(capsys)
    assert line.startswith("xco2: mlflow_tracking_uri (XCO2_MLFLOW_TRACKING_URI)") and why in line


def test_plain_settings_and_commands_without_the_registry_do_not_probe(command_env, capsys, monkeypatch):
    """The nightly path's load_settings() and `xco2 config` never wait on the network."""
    import requests

    from flows import cli

    def no_network(*args, **kwargs):
        raise AssertionError("probed the tracking server")

    monkeypatch.setattr(requests, "get", no_network)
    command_env.setenv("XCO2_MLFLOW_TRACKING_URI", "http://mlflow.example.org:5000")
    assert load_settings().tracking_uri == "http://mlflow.example.org:5000"
    assert cli.main(["config"]) == 0


def test_a_server_that_answers_as_mlflow_does_passes(command_env, monkeypatch):
    from flows import cli

    with _http_server(200, b"OK") as uri:
        command_env.setenv("XCO2_MLFLOW_TRACKING_URI", uri)
        monkeypatch.setattr(cli, "_prefect_api_for", lambda args: nullcontext())
        monkeypatch.setattr(cli, "_cmd_retrain", lambda args: 0)
        assert cli.main(["retrain"]) == 0


def test_a_missing_local_source_directory_stops_the_daily_run(command_env, no_flow, capsys, tmp_path):
    missing = tmp_path / "downloads"
    command_env.setenv("XCO2_SOURCE", "local")
    command_env.setenv("XCO2_LOCAL_DIR", str(missing))
    assert no_flow.main(["daily", "--end", "2020-06-01"]) == 2
    line = _one_line(capsys)
    assert "local_dir (XCO2_LOCAL_DIR)" in line and f"{missing} does not exist" in line
    assert no_flow.main(["config"]) == 2
    (tmp_path / "afile").write_text("")
    command_env.setenv("XCO2_LOCAL_DIR", str(tmp_path / "afile"))
    capsys.readouterr()
    assert no_flow.main(["daily"]) == 2
    assert "is not a directory" in _one_line(capsys)


def test_a_pull_from_a_missing_local_directory_is_not_retried(tmp_path, monkeypatch):
    """Flows started without the command line (a deployment) reach the pull: it fails at once."""
    import functools
    import importlib

    pull_module = importlib.import_module("tasks.sources.pull")
    retry_module = importlib.import_module("tasks.sources.retry")
    sleeps: list[float] = []
    monkeypatch.setattr(pull_module, "with_retries", functools.partial(retry_module.with_retries, sleep=sleeps.append))
    settings = load_settings(data_dir=str(tmp_path / "data"), source="local", local_dir=str(tmp_path / "gone"))
    report = pull_module.pull(settings, products=("oco2", "gosat"))
    assert sleeps == []
    assert set(report.failed) == {"oco2", "gosat"}
    assert all("XCO2_LOCAL_DIR" in why and "does not exist" in why for why in report.failed.values())
