"""Issue 10, case 14: with credentials set and both services unreachable, a daily run gives up on
each service after a few connection failures (circuit breaker), ends Failed within seconds, and
says which products failed and why; `xco2 daily` exits non-zero.

The network boundary: the CDS is the real cdsapi client pointed at a closed port on loopback
(real `requests` connection refusals, cdsapi's own retries and timeouts); earthaccess's login,
search and download are replaced by functions that make a real request to that same closed port.
"""

from __future__ import annotations

import functools
import importlib
import socket
import time
from datetime import date

import pytest
import requests

from tasks.settings import load_settings
from tasks.sources.pull import CDS_SERVICE, EARTHDATA_SERVICE, EverySourceFailed, pull
from tasks.sources.retry import CircuitBreaker, ServiceUnreachable, is_connection_failure

earthdata = importlib.import_module("tasks.sources.earthdata")
pull_module = importlib.import_module("tasks.sources.pull")
retry_module = importlib.import_module("tasks.sources.retry")

DAY = date(2020, 6, 10)
PRODUCTS = ("oco2", "oco3", "gosat", "era5")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def unreachable(tmp_path, monkeypatch):
    """Credentials for both services; every request to either is refused."""
    port = _closed_port()
    url = f"http://127.0.0.1:{port}"
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    monkeypatch.setenv("EARTHDATA_USERNAME", "someone")
    monkeypatch.setenv("EARTHDATA_PASSWORD", "not-a-real-password")
    monkeypatch.setenv("CDSAPI_URL", f"{url}/api")
    monkeypatch.setenv("CDSAPI_KEY", "abcd-1234-not-a-real-key")
    monkeypatch.delenv("EARTHDATA_TOKEN", raising=False)
    monkeypatch.setattr(earthdata, "_logged_in", None)
    calls = {"earthdata": 0}

    def refused(*args, **kwargs):
        calls["earthdata"] += 1
        requests.get(f"{url}/api/users/tokens")  # no timeout given: bounded_requests supplies one

    earthaccess = earthdata._earthaccess()
    for name in ("login", "search_data", "download"):
        monkeypatch.setattr(earthaccess, name, refused)
    # The pull's back-off waits are recorded, not slept: the test measures everything else.
    sleeps: list[float] = []
    monkeypatch.setattr(pull_module, "with_retries", functools.partial(retry_module.with_retries, sleep=sleeps.append))
    cds_requests = []
    real_session_request = requests.sessions.Session.request

    def counting(self, method, url_, *args, **kwargs):
        if f":{port}/" in url_ and "/retrieve/" in url_:
            cds_requests.append(kwargs.get("timeout"))
        return real_session_request(self, method, url_, *args, **kwargs)

    monkeypatch.setattr(requests.sessions.Session, "request", counting)
    return {"calls": calls, "sleeps": sleeps, "cds_requests": cds_requests, "port": port}


def _settings(tmp_path, **kw):
    return load_settings(data_dir=str(tmp_path / "data"), source="earthdata", cds_client_sleep_s=0.1, **kw)


def test_breaker_gives_up_each_service_after_three_failures(tmp_path, unreachable):
    settings = _settings(tmp_path)
    t0 = time.monotonic()
    report = pull(settings, products=PRODUCTS, start=DAY, end=DAY)
    elapsed = time.monotonic() - t0
    assert set(report.failed) == set(PRODUCTS)
    assert report.n_fetched == 0
    assert set(report.unreachable) == {EARTHDATA_SERVICE, CDS_SERVICE}
    # Three tries in all per service (not per product, not per granule), then never asked again.
    assert unreachable["calls"]["earthdata"] == settings.source_breaker_failures
    cds_tries = len(unreachable["cds_requests"])
    assert 1 <= cds_tries <= settings.source_breaker_failures * settings.cds_client_retries
    assert "unreachable" in report.failed["oco3"] and "unreachable" in report.failed["era5"]
    # Every CDS request carried the configured connect/read timeouts.
    assert set(unreachable["cds_requests"]) == {(settings.source_connect_timeout_s, settings.source_read_timeout_s)}
    assert elapsed + sum(unreachable["sleeps"]) < 60, (elapsed, unreachable["sleeps"])
    # Back-off waits only between the failures before the breaker opens: two per service.
    assert len(unreachable["sleeps"]) == 2 * (settings.source_breaker_failures - 1), unreachable["sleeps"]
    # The next run tries again (a breaker lives for one run).
    again = pull(settings, products=("oco2",), start=DAY, end=DAY)
    assert "oco2" in again.failed and unreachable["calls"]["earthdata"] == 2 * settings.source_breaker_failures


def test_daily_run_ends_failed_naming_products(tmp_path, unreachable, prefect_harness):
    from flows.daily import daily_update

    t0 = time.monotonic()
    state = daily_update(start=DAY.isoformat(), end=DAY.isoformat(),
                         overrides={"data_dir": str(tmp_path / "data"), "source": "earthdata",
                                    "cds_client_sleep_s": 0.1},
                         return_state=True)
    elapsed = time.monotonic() - t0
    assert state.is_failed(), state
    with pytest.raises(EverySourceFailed) as caught:
        state.result()
    message = str(caught.value)
    for product in PRODUCTS:
        assert f"  {product}: " in message, message
    assert "NASA Earthdata" in message and "Copernicus CDS" in message and "Connection refused" in message
    assert elapsed + sum(unreachable["sleeps"]) < 90, elapsed


def test_cli_daily_exits_nonzero_with_the_cause_last(tmp_path, unreachable, prefect_harness, monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.setenv("XCO2_SOURCE", "earthdata")
    monkeypatch.setenv("XCO2_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XCO2_CDS_CLIENT_SLEEP_S", "0.1")
    rc = main(["daily", "--start", DAY.isoformat(), "--end", DAY.isoformat()])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    tail = "\n".join(err[-8:])
    assert "every source failed to pull" in tail and "era5" in tail and "oco2" in tail
    assert "given up for this run" in err[-1]


def test_connection_failures_are_told_from_answers():
    refused = requests.ConnectionError("HTTPSConnectionPool(host='cds'): Max retries exceeded "
                                       "(Caused by NewConnectionError('Failed to establish a new connection: "
                                       "[Errno 111] Connection refused'))")
    assert is_connection_failure(refused)
    assert is_connection_failure(requests.ConnectTimeout("connect timed out"))
    assert is_connection_failure(socket.gaierror(-2, "Name or service not known"))
    # Wrapped the way the remotes wrap (raise ... from None keeps the context).
    try:
        try:
            raise requests.ReadTimeout("read timed out")
        except requests.ReadTimeout:
            raise RuntimeError("CDS request failed") from None
    except RuntimeError as wrapped:
        assert is_connection_failure(wrapped)
    # The server answered: an HTTP error, or a reset mid-transfer, is not "unreachable".
    response = requests.Response()
    response.status_code = 503
    assert not is_connection_failure(requests.HTTPError("503 Server Error", response=response))
    assert not is_connection_failure(ConnectionResetError(104, "Connection reset by peer"))
    assert not is_connection_failure(ValueError("bad file"))


def test_breaker_counts_consecutive_failures_only():
    breaker = CircuitBreaker("CDS", threshold=2)

    def refuse():
        raise ConnectionRefusedError(111, "Connection refused")

    response = requests.Response()
    response.status_code = 500

    def answer_500():
        raise requests.HTTPError("500 Server Error", response=response)

    for fn in (refuse, answer_500, refuse):  # an answer in between resets the count
        with pytest.raises(Exception):
            breaker.call(fn)
    assert not breaker.is_open
    with pytest.raises(ServiceUnreachable) as opened:  # the failure that opens it says so at once
        breaker.call(refuse)
    assert breaker.is_open and isinstance(opened.value.__cause__, ConnectionRefusedError)
    ran = []
    with pytest.raises(ServiceUnreachable, match="CDS unreachable"):
        breaker.call(lambda: ran.append(1))
    assert ran == []


def test_bounded_requests_gives_every_untimed_request_a_timeout(monkeypatch):
    from tasks.sources.retry import bounded_requests

    seen = []

    def send(self, request, **kwargs):  # the transport: record the timeout requests would use
        seen.append(kwargs.get("timeout"))
        response = requests.Response()
        response.status_code = 200
        response.request = request
        return response

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    original = requests.sessions.Session.request
    with bounded_requests(3, 30):
        requests.get("http://127.0.0.1:9/untimed")  # as earthaccess and python-cmr call it
        requests.get("http://127.0.0.1:9/timed", timeout=7)  # a caller's own timeout stays
        with bounded_requests(5, 60):  # nested (two pulls in one process): the shorter wins
            requests.Session().get("http://127.0.0.1:9/nested")
        requests.get("http://127.0.0.1:9/still")
    requests.get("http://127.0.0.1:9/after")
    assert seen == [(3.0, 30.0), 7, (3.0, 30.0), (3.0, 30.0), None]
    assert requests.sessions.Session.request is original
