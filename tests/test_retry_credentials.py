import random

import pytest

from tasks.sources import credentials
from tasks.sources.credentials import MissingCredentials, cds_credentials, earthdata_login, redact
from tasks.sources.retry import PermanentSourceError, http_status, with_retries


class HTTPError(Exception):
    def __init__(self, status):
        super().__init__(f"HTTP {status}")
        self.status_code = status


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in ("EARTHDATA_TOKEN", "EARTHDATA_USERNAME", "EARTHDATA_PASSWORD", "CDSAPI_URL", "CDSAPI_KEY",
                "NETRC", "CDSAPI_RC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def _flaky(failures):
    calls = []

    def call():
        calls.append(1)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return "ok"

    return call, calls


def test_transient_errors_back_off_with_jitter():
    sleeps = []
    call, calls = _flaky([HTTPError(503), ConnectionError("reset")])
    assert with_retries(call, "x", sleep=sleeps.append, rng=random.Random(1)) == "ok"
    assert len(calls) == 3 and len(sleeps) == 2
    assert 0 <= sleeps[0] <= 2.0 and 0 <= sleeps[1] <= 4.0  # full jitter under base * 2^k


@pytest.mark.parametrize("status", [401, 403, 404])
def test_permanent_errors_are_not_retried(status):
    call, calls = _flaky([HTTPError(status)])
    with pytest.raises(PermanentSourceError, match=str(status)):
        with_retries(call, "x", sleep=lambda s: None)
    assert len(calls) == 1


def test_gives_up_after_the_last_attempt():
    call, calls = _flaky([TimeoutError("t")] * 5)
    with pytest.raises(TimeoutError):
        with_retries(call, "x", attempts=3, sleep=lambda s: None)
    assert len(calls) == 3
    assert http_status(Exception("server said 404 Not Found")) == 404


def test_earthdata_strategies_and_hint(clean_env, monkeypatch):
    with pytest.raises(MissingCredentials, match="EARTHDATA_USERNAME and EARTHDATA_PASSWORD.*~/.netrc"):
        earthdata_login()
    (clean_env / ".netrc").write_text("machine urs.earthdata.nasa.gov login me password hunter22\n")
    assert earthdata_login().strategy == "netrc"
    monkeypatch.setenv("EARTHDATA_USERNAME", "me")
    monkeypatch.setenv("EARTHDATA_PASSWORD", "hunter22")
    login = earthdata_login()
    assert login.strategy == "environment" and "hunter22" not in repr(login)


def test_cds_sources_and_hint(clean_env, monkeypatch):
    with pytest.raises(MissingCredentials, match="CDSAPI_URL and CDSAPI_KEY.*~/.cdsapirc"):
        cds_credentials()
    (clean_env / ".cdsapirc").write_text("url: https://cds.example/api\nkey: abcd-efgh-1234\n")
    creds = cds_credentials()
    assert creds.url == "https://cds.example/api" and creds.key == "abcd-efgh-1234"
    assert "abcd-efgh-1234" not in repr(creds)
    monkeypatch.setenv("CDSAPI_KEY", "zzzz-9999")
    assert cds_credentials().key == "zzzz-9999"
    assert redact("token zzzz-9999 and abcd-efgh-1234") == "token *** and ***"
    assert "zzzz-9999" in credentials.secret_values()
