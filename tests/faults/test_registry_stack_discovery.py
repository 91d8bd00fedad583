"""Issue 10, case 9: one registry for the demo, the command line and the stack (fast, no real servers).

The command line finds a running stack through its state file and uses its servers; a state file
whose servers do not answer, a stopped stack, or a stack of another data directory leave the
command on its local stores, with a WARNING where the user might have expected the stack, and
never hang. The stack's MLflow server serves the data directory's store, the one the command line
uses without a stack.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deployments import stack


class _Health(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        ok = self.path in ("/api/health", "/health")
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b"true" if ok else b"")

    def log_message(self, *args):
        pass


@pytest.fixture
def answering():
    """A server answering both health checks, as the stack's Prefect and MLflow servers do."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent():
    """A port that accepts connections and never answers (a hung server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _state(tmp_path: Path, prefect: str, mlflow: str, data_dir: Path, **extra) -> dict[str, str]:
    state_dir = tmp_path / "state"
    state_dir.mkdir(exist_ok=True)
    (state_dir / "stack.json").write_text(json.dumps({
        "prefect_api_url": f"{prefect}/api", "prefect_ui": prefect, "mlflow_url": mlflow,
        "data_dir": str(data_dir), "stopped": False, **extra}))
    return {"XCO2_STACK_DIR": str(state_dir)}


def test_no_state_file_means_local_stores(tmp_path, caplog):
    environ = {"XCO2_STACK_DIR": str(tmp_path / "none")}
    with caplog.at_level(logging.INFO):
        use = stack.use_running_stack(tmp_path / "data", environ)
    assert use.decision == "local" and use.state_file is None
    assert environ == {"XCO2_STACK_DIR": str(tmp_path / "none")} and not caplog.records


def test_state_file_in_the_working_directory_is_found(tmp_path, monkeypatch, answering, caplog):
    data = tmp_path / "xco2-data"
    state = tmp_path / ".xco2-stack"
    state.mkdir()
    (state / "stack.json").write_text(json.dumps({"prefect_api_url": f"{answering}/api", "prefect_ui": answering,
                                                  "mlflow_url": answering, "data_dir": str(data)}))
    monkeypatch.chdir(tmp_path)
    environ: dict[str, str] = {}
    with caplog.at_level(logging.INFO, logger="xco2.stack"):
        use = stack.use_running_stack(Path("xco2-data"), environ)  # relative, as `xco2 demo` passes it
    assert use.decision == "attached"
    assert environ == {"PREFECT_API_URL": f"{answering}/api", "XCO2_MLFLOW_TRACKING_URI": answering}
    [line] = [r for r in caplog.records if r.name == "xco2.stack"]  # one log line says so
    assert line.levelno == logging.INFO and answering in line.getMessage() and "MLflow" in line.getMessage()


def test_a_running_stack_is_used(tmp_path, answering):
    data = tmp_path / "data"
    environ = _state(tmp_path, answering, answering, data)
    use = stack.use_running_stack(data, environ)
    assert use.decision == "attached"
    assert environ["PREFECT_API_URL"] == f"{answering}/api" and environ["XCO2_MLFLOW_TRACKING_URI"] == answering


@pytest.mark.parametrize("dead", ["refused", "silent"])
def test_a_stale_state_file_falls_back_with_a_warning_and_never_hangs(tmp_path, caplog, answering, silent, dead):
    data = tmp_path / "data"
    mlflow = _closed_port_url() if dead == "refused" else silent
    environ = _state(tmp_path, answering, mlflow, data)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="xco2.stack"):
        use = stack.use_running_stack(data, environ, timeout=1.0)
    assert time.monotonic() - t0 < 10
    assert use.decision == "fallback" and mlflow in use.reason
    assert "PREFECT_API_URL" not in environ and "XCO2_MLFLOW_TRACKING_URI" not in environ
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "do not answer" in warning.getMessage() and "local stores" in warning.getMessage()


def test_a_sourced_env_of_a_dead_stack_is_dropped(tmp_path, caplog):
    """After `source .xco2-stack/env` the stack's URLs are in the environment: with its servers
    gone, they are removed (for this process), so the command does not fail on them."""
    data, prefect, mlflow = tmp_path / "data", _closed_port_url(), _closed_port_url()
    environ = {**_state(tmp_path, prefect, mlflow, data), "PREFECT_API_URL": f"{prefect}/api",
               "XCO2_MLFLOW_TRACKING_URI": mlflow, "MLFLOW_TRACKING_URI": mlflow, "XCO2_DATA_DIR": str(data)}
    with caplog.at_level(logging.WARNING, logger="xco2.stack"):
        use = stack.use_running_stack(data, environ, timeout=1.0)
    assert use.decision == "fallback"
    assert set(environ) == {"XCO2_STACK_DIR", "XCO2_DATA_DIR"}
    assert any(prefect in r.getMessage() for r in caplog.records)


def test_a_stopped_stack_is_silent_unless_the_environment_pointed_at_it(tmp_path, caplog):
    data, prefect, mlflow = tmp_path / "data", _closed_port_url(), _closed_port_url()
    environ = _state(tmp_path, prefect, mlflow, data, stopped=True)
    with caplog.at_level(logging.INFO, logger="xco2.stack"):
        assert stack.use_running_stack(data, environ).decision == "local"
    assert not caplog.records
    environ["PREFECT_API_URL"] = f"{prefect}/api"
    with caplog.at_level(logging.WARNING, logger="xco2.stack"):
        use = stack.use_running_stack(data, environ)
    assert use.decision == "fallback" and "stopped" in use.reason and "PREFECT_API_URL" not in environ
    assert caplog.records


def test_a_stack_of_another_data_directory_is_not_used(tmp_path, caplog, answering):
    environ = _state(tmp_path, answering, answering, tmp_path / "stack-data")
    with caplog.at_level(logging.WARNING, logger="xco2.stack"):
        use = stack.use_running_stack(tmp_path / "other-data", environ)
    assert use.decision == "fallback" and str(tmp_path / "stack-data") in use.reason
    assert "PREFECT_API_URL" not in environ and caplog.records


def test_servers_named_in_the_environment_win(tmp_path, answering):
    data = tmp_path / "data"
    environ = {**_state(tmp_path, answering, answering, data), "XCO2_MLFLOW_TRACKING_URI": "http://mlflow.example:5000"}
    assert stack.use_running_stack(data, environ).decision == "local"
    assert environ["XCO2_MLFLOW_TRACKING_URI"] == "http://mlflow.example:5000" and "PREFECT_API_URL" not in environ


def test_an_unreadable_state_file_is_named(tmp_path, caplog):
    state = tmp_path / "state"
    state.mkdir()
    (state / "stack.json").write_text('{"prefect_api_url": ')
    with caplog.at_level(logging.WARNING, logger="xco2.stack"):
        use = stack.use_running_stack(tmp_path, {"XCO2_STACK_DIR": str(state)})
    assert use.decision == "fallback" and str(state / "stack.json") in caplog.records[0].getMessage()


def test_down_marks_the_state_stopped(tmp_path):
    cfg = stack.StackConfig.from_env({"XCO2_DATA_DIR": str(tmp_path / "data")}, state_dir=tmp_path / "state")
    cfg.state_dir.mkdir()
    stack._write_state(cfg, {"prefect_api_url": "http://127.0.0.1:1/api", "prefect_ui": "http://127.0.0.1:1",
                             "mlflow_url": "http://127.0.0.1:2", "data_dir": str(cfg.data_dir), "stopped": False})
    stack.down(cfg)
    assert json.loads(cfg.state_file.read_text())["stopped"] is True
    assert not list(cfg.state_dir.glob(".*.tmp"))


# --- what the stack's MLflow server serves --------------------------------------------------------

def _mlflow_plan(environ: dict[str, str], tmp_path: Path):
    cfg = stack.StackConfig.from_env(environ, state_dir=tmp_path / "state")
    _, argv, env = stack.server_plans(cfg)["mlflow-server"]
    return cfg, argv, env


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_the_server_serves_the_data_directorys_store(tmp_path):
    from registry.store import artifact_root_for
    from tasks.settings import load_settings

    data = tmp_path / "xco2-data"
    cfg, argv, env = _mlflow_plan({"XCO2_DATA_DIR": str(data)}, tmp_path)
    cli_uri = load_settings(data_dir=str(data)).tracking_uri  # what `xco2 demo` records into
    assert env["MLFLOW_BACKEND_STORE_URI"] == cli_uri == f"sqlite:///{data.resolve() / 'mlflow.db'}"
    # Experiments made through the server get the command line's artifact location (file: URI).
    assert _option(argv, "--default-artifact-root") == artifact_root_for(cli_uri) == (data / "mlartifacts").as_uri()
    assert _option(argv, "--artifacts-destination") == (data / "mlartifacts").as_uri()
    assert "mlflow.db" not in " ".join(argv) and str(cfg.state_dir) not in " ".join(argv)


def test_a_database_tracking_uri_of_up_is_served_and_an_http_one_ignored(tmp_path):
    other = f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
    _, argv, env = _mlflow_plan({"XCO2_DATA_DIR": str(tmp_path / "d"), "XCO2_MLFLOW_TRACKING_URI": other}, tmp_path)
    assert env["MLFLOW_BACKEND_STORE_URI"] == other
    assert _option(argv, "--default-artifact-root") == (tmp_path / "elsewhere" / "mlartifacts").as_uri()
    _, _, env = _mlflow_plan({"XCO2_DATA_DIR": str(tmp_path / "d"),  # a shell that sourced the env file
                              "XCO2_MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}, tmp_path)
    assert env["MLFLOW_BACKEND_STORE_URI"] == f"sqlite:///{(tmp_path / 'd').resolve() / 'mlflow.db'}"


def test_a_postgresql_backend_is_kept_with_artifacts_in_the_data_directory(tmp_path):
    url = "postgresql+psycopg://xco2:s3cret@127.0.0.1:5432/mlflow"
    _, argv, env = _mlflow_plan({"XCO2_DATA_DIR": str(tmp_path / "d"), "XCO2_STACK_MLFLOW_BACKEND_URI": url}, tmp_path)
    assert env["MLFLOW_BACKEND_STORE_URI"] == url
    assert _option(argv, "--default-artifact-root") == (tmp_path / "d" / "mlartifacts").resolve().as_uri()
    assert "s3cret" not in " ".join(argv)


def test_the_env_file_names_the_state_directory(tmp_path):
    cfg = stack.StackConfig.from_env({"XCO2_DATA_DIR": str(tmp_path / "d")}, state_dir=tmp_path / "state")
    cfg.state_dir.mkdir()
    text = stack.write_env_file(cfg).read_text()
    assert f"export XCO2_STACK_DIR={cfg.state_dir}" in text
    assert f"export XCO2_MLFLOW_TRACKING_URI={cfg.mlflow_url}" in text


# --- `make demo` and a registry it did not make ---------------------------------------------------

def test_the_demo_records_into_a_registry_made_before_it(tmp_path):
    """`make up` on a fresh data dir makes its MLflow store there; `make demo` then (attached or
    not) records into it instead of refusing the data dir or deleting the store."""
    from flows.demo import _clear_previous_demo
    from tasks.settings import load_settings

    data = tmp_path / "xco2-data"
    (data / "mlartifacts").mkdir(parents=True)
    (data / "mlflow.db").write_text("the stack's store")
    _clear_previous_demo(load_settings(data_dir=str(data)))
    assert (data / "mlflow.db").read_text() == "the stack's store" and (data / "mlartifacts").is_dir()


def test_a_new_demo_world_keeps_a_served_registry(tmp_path):
    """With the stack attached (tracking URI: its server, which serves this mlflow.db), a new demo
    world clears what the old one derived but not the database under the running server."""
    from flows.demo import _clear_previous_demo
    from tasks.settings import load_settings

    data = tmp_path / "xco2-data"
    for sub in ("raw/oco2", "archive/chengdu", "models/1", "demo", "mlartifacts"):
        (data / sub).mkdir(parents=True)
    (data / "demo" / "world.json").write_text("{}")
    (data / "mlflow.db").write_text("served")
    _clear_previous_demo(load_settings(data_dir=str(data), mlflow_tracking_uri="http://127.0.0.1:5000"))
    assert not (data / "raw").exists() and not (data / "archive").exists() and not (data / "models").exists()
    assert (data / "mlflow.db").read_text() == "served" and (data / "mlartifacts").is_dir()
