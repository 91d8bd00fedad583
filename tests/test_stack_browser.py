"""The operator's first hour after the demo, through both UIs in a real browser (issue 20).

Slow (about 18 minutes on two shared cores), so out of `make test`; `make test-stack` runs it:
    .venv/bin/python -m pytest -q -m slow tests/test_stack_browser.py
As a user would, in a temporary working directory with a stack state directory of its own and
free loopback ports: `xco2 demo --small` (a subprocess, no stack running), then
`python -m deployments.stack up` with only XCO2_DATA_DIR among the xco2 settings (the data dir
says which region and source it was made for), then each of the four deployments of
deployments/prefect.yaml run from the API on the worker. The stack's Prefect server must show the
demo's flow runs (recorded in its database before it started); every deployment run must
complete and nothing may be quarantined.

The UIs are driven by Debian's `chromium` through Selenium and Debian's `chromium-driver` (`.ci/run`
installs both where missing): the Prefect deployments page lists the four deployments with their
schedules; a completed daily run's Artifacts tab shows its artifacts and the quicklook image
renders; the MLflow registry shows the `champion` alias on the model and the version's tags.
Screenshots go to `$XCO2_TEST_OUTPUT/browser` (default `<repo>/test-output/browser`), printed
at the end of each test: look at them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
from stack_support import free_port, tail

from tasks.steps.demo import SMALL_REGION

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODEL = "xco2-resnet-lstm"
DEPLOYMENTS = ("daily-update", "monthly-retrain", "backfill", "archive-report")
# The demo's window (DemoOptions: 40 days from 2020-06-01); `--archive-days 1` maps its last day.
DEMO_START, DEMO_END = date(2020, 6, 1), date(2020, 7, 10)
DAY_BEFORE_END = date(2020, 7, 9)
# Single-page apps render slowly on two loaded cores.
PAGE_TIMEOUT_S = 90


def output_dir() -> Path:
    """Where the screenshots go: a stable folder, kept after the run for a person to look at."""
    root = os.environ.get("XCO2_TEST_OUTPUT")
    folder = (Path(root) if root else REPO / "test-output") / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _user_env(root: Path, prefect_port: int, mlflow_port: int) -> dict[str, str]:
    """A user's shell: no xco2 setting, no server named, the stack's state in the test's folder."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XCO2_", "PREFECT_", "MLFLOW_"))}
    env.update(XCO2_STACK_DIR=str(root / "state"), XCO2_STACK_PREFECT_PORT=str(prefect_port),
               XCO2_STACK_MLFLOW_PORT=str(mlflow_port), XCO2_STACK_TIMEOUT="600")
    return env


def _stack(command: str, env: dict[str, str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deployments.stack", command], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _deliver_events() -> None:
    """Send this process's queued Prefect events while their server still answers: left queued,
    they are retried at interpreter exit against a stopped server, minutes per event."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=120, at_exit=False)


def _run_deployment(api: str, name: str, parameters: dict):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}):
        return run_deployment(name, parameters=parameters, timeout=1800, poll_interval=3)


@pytest.fixture(scope="module")
def first_hour(tmp_path_factory):
    """`xco2 demo --small`, `make up` with only the data dir, and the four deployments run from the
    API, as an operator does in the first hour; `down` at the end."""
    import psutil

    root = tmp_path_factory.mktemp("first-hour")
    state, data = root / "state", root / "xco2-data"
    prefect_port, mlflow_port = free_port(), free_port()
    env = _user_env(root, prefect_port, mlflow_port)
    api, mlflow = f"http://127.0.0.1:{prefect_port}/api", f"http://127.0.0.1:{mlflow_port}"
    timings: dict[str, float] = {}

    t = time.perf_counter()
    demo = subprocess.run([str(BIN / "xco2"), "demo", "--small", "--archive-days", "1", "--no-compare",
                           "--data-dir", str(data)], cwd=root, env=env, capture_output=True, text=True, timeout=2400)
    timings["demo_s"] = round(time.perf_counter() - t, 1)
    assert demo.returncode == 0, f"xco2 demo: {demo.returncode}\n{demo.stdout[-3000:]}\n{demo.stderr[-6000:]}"
    before_up = datetime.now(timezone.utc)

    up_env = {**env, "XCO2_DATA_DIR": str(data)}  # the only xco2 setting: no region, no source
    runs: dict[str, object] = {}
    pids: set[int] = set()
    try:
        t = time.perf_counter()
        started = _stack("up", up_env, root)
        timings["up_s"] = round(time.perf_counter() - t, 1)
        assert started.returncode == 0 and "ready" in started.stdout, started.stdout + started.stderr
        for name in ("prefect-server", "mlflow-server", "worker"):
            proc = psutil.Process(int((state / f"{name}.pid").read_text().split()[0]))
            pids |= {proc.pid, *(c.pid for c in proc.children(recursive=True))}
        # Each deployment as an operator starts it (the UI's "Quick run", `prefect deployment run`):
        # daily-update with its defaults, as the nightly schedule runs it (the data dir's `today`
        # is the demo world's last day: the run maps the archive look-back's days the demo left
        # unmapped), the retrain with its defaults, a backfill over the window's last two days,
        # the report over the demo's window.
        plan = [("daily-update", "xco2-daily-update/daily-update", {}),
                ("monthly-retrain", "xco2-monthly-retrain/monthly-retrain", {}),
                ("backfill", "xco2-backfill/backfill",
                 {"start": DAY_BEFORE_END.isoformat(), "end": DEMO_END.isoformat()}),
                ("archive-report", "xco2-archive-report/archive-report",
                 {"start": DEMO_START.isoformat(), "end": DEMO_END.isoformat()})]
        for key, deployment, parameters in plan:
            t = time.perf_counter()
            runs[key] = _run_deployment(api, deployment, parameters)
            timings[f"{key}_s"] = round(time.perf_counter() - t, 1)
        yield {"root": root, "state": state, "data": data, "api": api, "mlflow": mlflow, "env": up_env,
               "prefect_ui": f"http://127.0.0.1:{prefect_port}", "before_up": before_up, "runs": runs,
               "timings": timings, "demo": demo, "up": started.stdout, "pids": pids}
    finally:
        _deliver_events()
        _stack("down", up_env, root, timeout=300)  # idempotent: test_down_stops_everything ran it first
        print(f"\nfirst hour timings: {timings}")


def _client_call(api: str, call):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}):
        with get_client(sync_client=True) as client:
            return call(client)


def _artifacts(api: str, flow_run_id) -> dict:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    artifacts = _client_call(api, lambda c: c.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))))
    return {a.key: a for a in artifacts}


def test_the_stack_shows_the_demos_flow_runs(first_hour):
    """The demo ran before the stack existed; its flow runs are in the stack's Prefect database,
    so the first thing the operator sees in the UI is the demo's work."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime

    runs = _client_call(first_hour["api"], lambda c: c.read_flow_runs(
        flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(before_=first_hour["before_up"]))))
    flows = {f.id: f.name for f in _client_call(first_hour["api"], lambda c: c.read_flows())}
    demo_runs = sorted(flows.get(r.flow_id, "?") for r in runs
                       if r.deployment_id is None and r.state is not None and r.state.is_completed())
    assert demo_runs == ["xco2-daily-update", "xco2-daily-update", "xco2-monthly-retrain"], (
        f"completed flow runs before `up` in the stack's Prefect API: {demo_runs}\n"
        f"state dir: {sorted(str(p.relative_to(first_hour['state'])) for p in first_hour['state'].rglob('*'))[:40]}\n"
        f"demo's log: {first_hour['demo'].stderr[-2000:]}")


def test_every_deployment_completes_and_nothing_is_quarantined(first_hour):
    problems = {key: str(run.state) for key, run in first_hour["runs"].items()
                if run.state is None or not run.state.is_completed()}
    assert not problems, (f"{problems}\n--- worker log ---\n"
                          f"{tail(first_hour['state'] / 'logs' / 'worker.log', 80)}")
    quarantine = first_hour["data"] / "quarantine"
    set_aside = sorted(str(p.relative_to(quarantine)) for p in quarantine.rglob("*")) if quarantine.exists() else []
    assert not set_aside, f"set aside in {quarantine}: {set_aside}"
    # The nightly run mapped, in the demo's region, the days of its look-back the demo left.
    nightly = _artifacts(first_hour["api"], first_hour["runs"]["daily-update"].id)
    assert {"daily-archive-days", "daily-quicklook", "daily-summary"} <= set(nightly), sorted(nightly)
    assert (first_hour["data"] / "archive" / SMALL_REGION.name).is_dir()


# --- the browser ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    """Debian's chromium, headless, through Debian's chromedriver (Selenium's own driver download
    cannot reach the network here)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("the browser test needs Debian's chromium and chromium-driver: "
                    "apt-get install chromium chromium-driver (.ci/run does it)")
    profile = tempfile.mkdtemp(prefix="xco2-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # As root and headless; without the background-networking flags chromium waits on a closed
    # network for its component updates and sync.
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--window-size=1600,1200"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait_for_text(driver, texts: list[str], timeout: float = PAGE_TIMEOUT_S) -> str:
    """The page's visible text once every one of `texts` is in it."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(d):
        body = _visible_text(d)
        return body if all(t in body for t in texts) else False

    try:
        return WebDriverWait(driver, timeout, poll_frequency=1).until(shown)
    except TimeoutException:
        body = _visible_text(driver)
        shot = _screenshot(driver, "failed-" + driver.current_url.rsplit("/", 1)[-1][:40].replace("?", "_"))
        missing = [t for t in texts if t not in body]
        raise AssertionError(f"{driver.current_url}: {missing} not shown after {timeout} s (screenshot {shot}); "
                             f"the page shows:\n{body[:3000]}") from None


def _visible_text(driver) -> str:
    # MLflow writes "@ champion" with a no-break space.
    return (driver.execute_script("return document.body ? document.body.innerText : ''") or "").replace("\xa0", " ")


def _screenshot(driver, name: str) -> Path:
    path = output_dir() / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"\nscreenshot: {path}")
    return path


def _prefect_ui_base(driver, ui: str) -> str:
    """The UI's base as a browser without a saved preference lands on it: the server redirects
    its root to its default UI (V2, under /v2). Its dashboard must show the stack's data, not
    "Unable to connect" (the UI calling another port)."""
    driver.get(ui + "/")
    _wait_for_text(driver, ["Dashboard", "xco2-process"])  # the work pool, read from the API
    path = driver.current_url.split("://", 1)[1].split("/", 1)[1]
    return ui + "/v2" if path.startswith("v2/") else ui


def _row_text(driver, cell_text: str) -> str:
    """The visible text of the innermost table row with an element reading `cell_text` (a <tr> in
    Prefect's UI, an ARIA row in MLflow's)."""
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.XPATH, f"//*[self::tr or @role='row'][.//*[normalize-space()='{cell_text}']]")
    assert rows, f"{driver.current_url}: no table row shows {cell_text!r}"
    return min((r.text for r in rows), key=len).replace("\xa0", " ")


def test_prefect_ui_lists_the_deployments_with_their_schedules(first_hour, browser):
    base = _prefect_ui_base(browser, first_hour["prefect_ui"])
    browser.get(f"{base}/deployments")
    # The cron schedules as the UI words them: daily-update at 02:30, the retrain on the 1st.
    _wait_for_text(browser, [*DEPLOYMENTS, "At 02:30 AM", "on day 1 of the month"])
    shot = _screenshot(browser, "prefect-deployments")
    assert "At 02:30 AM" in _row_text(browser, "daily-update"), shot
    assert "At 04:00 AM" in _row_text(browser, "monthly-retrain"), shot
    for manual in ("backfill", "archive-report"):
        assert "At " not in _row_text(browser, manual), f"{manual} shows a schedule ({shot})"


def test_prefect_ui_shows_a_demo_run(first_hour, browser):
    """The demo's retrain, run before `up`, opens in the stack's UI as a completed run."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterStartTime

    runs = _client_call(first_hour["api"], lambda c: c.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=["xco2-monthly-retrain"])),
        flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(before_=first_hour["before_up"]))))
    assert runs, "no run of the demo's retrain in the stack's Prefect API"
    base = _prefect_ui_base(browser, first_hour["prefect_ui"])
    browser.get(f"{base}/runs/flow-run/{runs[0].id}")
    _wait_for_text(browser, [runs[0].name, "xco2-monthly-retrain", "Completed"])
    _screenshot(browser, "prefect-demo-retrain-run")


def test_prefect_ui_shows_a_daily_runs_artifacts_and_its_quicklook(first_hour, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    run = first_hour["runs"]["daily-update"]
    artifacts = _artifacts(first_hour["api"], run.id)
    assert "daily-quicklook" in artifacts, f"the nightly run published no quicklook: {sorted(artifacts)}"
    day = (artifacts["daily-quicklook"].description or "").removeprefix("Quicklook of ")
    base = _prefect_ui_base(browser, first_hour["prefect_ui"])
    browser.get(f"{base}/runs/flow-run/{run.id}?tab=Artifacts")
    keys = ["daily-days-processed", "daily-archive-days", "daily-model", "daily-quicklook", "daily-summary"]
    _wait_for_text(browser, [run.name, "Completed", *keys])
    browser.execute_script("""const tab = Array.from(document.querySelectorAll('[role=tab]'))
                              .find(t => t.textContent.trim() === 'Artifacts');
                              if (tab) tab.scrollIntoView({block: 'start'});""")
    _screenshot(browser, "prefect-daily-run-artifacts")

    # The quicklook's page renders its Markdown: the map is an inline PNG, decoded by the browser.
    browser.get(f"{base}/artifacts/artifact/{artifacts['daily-quicklook'].id}")
    title = f"XCO2 {SMALL_REGION.name} {day}"
    _wait_for_text(browser, [title, "Quicklook of"])
    image = WebDriverWait(browser, PAGE_TIMEOUT_S, poll_frequency=1).until(lambda d: d.execute_script(
        "const i = Array.from(document.images).find(i => i.alt === arguments[0]);"
        "return i && i.complete && i.naturalWidth > 0 ? [i.naturalWidth, i.naturalHeight] : false;", title))
    browser.execute_script(
        "Array.from(document.images).find(i => i.alt === arguments[0]).scrollIntoView({block: 'center'})", title)
    shot = _screenshot(browser, "prefect-daily-quicklook")
    assert image[0] >= 300 and image[1] >= 300, f"the quicklook decoded to {image} pixels ({shot})"


def _close_mlflow_assistant(driver) -> None:
    """The MLflow assistant's panel opens on a first visit and covers a third of the page."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.XPATH, "//button[@aria-label='Close']"):
        if button.is_displayed():
            button.click()
            return


def test_mlflow_ui_shows_the_champion_its_scores_network_share_and_onnx(first_hour, browser):
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By

    client = MlflowClient(tracking_uri=first_hour["mlflow"])
    champion = client.get_model_version_by_alias(MODEL, "champion")
    ui = first_hour["mlflow"]

    browser.get(f"{ui}/#/models/{MODEL}")
    _wait_for_text(browser, [MODEL, f"Version {champion.version}", "@ champion"])
    _close_mlflow_assistant(browser)
    row = f"//*[@role='row'][.//a[normalize-space()='Version {champion.version}']]"
    chips = browser.find_elements(By.XPATH, f"{row}//*[normalize-space()='@ champion' or normalize-space()='@\u00a0champion']")
    if chips:  # newer versions come first, each row as tall as its tags: bring the champion's into view
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", chips[-1])
    shot = _screenshot(browser, "mlflow-registered-model")
    assert chips and "champion" in _row_text(browser, f"Version {champion.version}"), (
        f"the alias is not on v{champion.version} ({shot})")

    browser.get(f"{ui}/#/models/{MODEL}/versions/{champion.version}")
    shown = ["Aliases", "@ champion", "Tags"]
    if "network_share" in champion.tags:  # the retrain tags the share it chose (issue 20, item 6)
        shown.append("network_share")
    _wait_for_text(browser, [f"Version {champion.version}", *shown])
    _close_mlflow_assistant(browser)
    shot = _screenshot(browser, "mlflow-champion-version")
    if "network_share" in champion.tags:
        assert champion.tags["network_share"] in _row_text(browser, "network_share"), shot

    # Its run: the held-out scores (spatial blocks, whole days) and the ONNX model it serves.
    run = client.get_run(champion.run_id)
    browser.get(f"{ui}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
    _wait_for_text(browser, ["Metrics", "blocks_rmse"])
    _close_mlflow_assistant(browser)
    search = browser.find_element(By.XPATH, "//input[@placeholder='Search metrics']")
    search.send_keys("rmse")
    _wait_for_text(browser, ["blocks_rmse", "days_rmse", "random_optimistic_rmse"])
    shot = _screenshot(browser, "mlflow-champion-run")
    for holdout in ("blocks", "days"):
        value = run.data.metrics[f"{holdout}_rmse"]
        assert str(value)[:5] in _row_text(browser, f"{holdout}_rmse"), f"{holdout}_rmse {value} not shown ({shot})"
    browser.get(f"{ui}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/artifacts/onnx/model.onnx")
    _wait_for_text(browser, ["onnx/model.onnx", "MB"])
    _close_mlflow_assistant(browser)
    _screenshot(browser, "mlflow-champion-onnx")


def test_down_stops_everything(first_hour):
    """Last: `down` leaves nothing of the stack running, its flow runs' processes included."""
    import psutil

    _deliver_events()
    stopped = _stack("down", first_hour["env"], first_hour["root"], timeout=300)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    assert not [pid for pid in first_hour["pids"] if alive(pid)], stopped.stdout
    assert not list(first_hour["state"].glob("*.pid"))
