"""OCO-2/OCO-3 from NASA Earthdata through earthaccess, offline.

Only earthaccess's login/search_data/download are faked: the fake search returns granule records
shaped like earthaccess's DataGranule, and the fake download writes real-format Lite files.
Everything else (credential discovery, the pull, retries, quarantine, manifest) is the real code.
"""

from __future__ import annotations

import builtins
import functools
import getpass
import importlib
import logging
import os
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace

import earthaccess
import pytest
from earthaccess.exceptions import DownloadFailure, LoginAttemptFailure, LoginStrategyUnavailable

from demo_world import write_oco_lite
from demo_world.fixtures import tiny_soundings
from demo_world.writers.oco_lite import production_time
from tasks.readers.names import oco_lite_name
from tasks.settings import load_settings
from tasks.sources import Manifest, raw_granules
from tasks.sources.pull import pull
from tasks.sources import earthdata
from tasks.sources.earthdata import EarthdataRemote, earthdata_remote

retry_module = importlib.import_module("tasks.sources.retry")
pull_module = importlib.import_module("tasks.sources.pull")  # the package re-exports the function

START, END = date(2020, 6, 1), date(2020, 6, 3)
DAYS = [START + timedelta(days=i) for i in range(3)]
SECRET = "s3cr3t-Pa55"
GES_DISC = "https://oco2.gesdisc.eosdis.nasa.gov/data/OCO2_DATA/OCO2_L2_Lite_FP.11.1r"


class FakeGranule:
    """What earthaccess.search_data returns, reduced to what a caller may use."""

    def __init__(self, day: date, mission: str = "oco2", name: str | None = None) -> None:
        self.day = day
        self.name = name or oco_lite_name(mission, day, production_time(day))
        self.url = f"{GES_DISC}/{day:%Y}/{self.name}"
        self._record = {
            "umm": {"GranuleUR": f"OCO2_L2_Lite_FP.11.1r:{self.name}",
                    "RelatedUrls": [{"URL": self.url, "Type": "GET DATA"}]},
            "meta": {"concept-id": f"G{day:%Y%m%d}-GES_DISC", "native-id": f"OCO2_L2_Lite_FP.11.1r:{self.name}",
                     "provider-id": "GES_DISC"},
        }

    def data_links(self, access=None, in_region=False):
        return [self.url]

    def size(self):
        return 1.5  # MB, as earthaccess reports it

    def __getitem__(self, key):
        return self._record[key]


class FakeAuth:
    """Holds the credentials like earthaccess's Auth does: a tripwire if anyone logs or stores it."""

    def __init__(self, username, password, authenticated=True):
        self.username, self.password, self.authenticated = username, password, authenticated

    def __repr__(self):
        return f"Auth(username={self.username!r}, password={self.password!r})"


class FakeEarthaccess:
    def __init__(self, granules):
        self.granules = granules
        self.logins: list[dict] = []
        self.searches: list[dict] = []
        self.downloads: list[dict] = []
        self.plan: list = []  # per-download-call behaviour; empty -> a complete file
        self.login_result = "ok"

    # earthaccess.login(strategy=, persist=)
    def login(self, strategy="all", persist=False, system=None):
        assert strategy in ("environment", "netrc"), f"would prompt or try everything: {strategy!r}"
        self.logins.append({"strategy": strategy, "persist": persist})
        if strategy == "environment":
            user, password = os.environ.get("EARTHDATA_USERNAME"), os.environ.get("EARTHDATA_PASSWORD")
            if not (user and password) and not os.environ.get("EARTHDATA_TOKEN"):
                raise LoginStrategyUnavailable("EARTHDATA_USERNAME and EARTHDATA_PASSWORD must both be set")
        else:
            import netrc

            auth = netrc.netrc(os.environ["NETRC"]).authenticators("urs.earthdata.nasa.gov")
            user, password = auth[0], auth[2]
        logging.getLogger("earthaccess.auth").debug("Using %s for EDL", strategy)
        if self.login_result == "reject":
            raise LoginAttemptFailure("Authentication with Earthdata Login failed with:\n{\"error\": \"invalid\"}")
        if self.login_result == "none":
            return None
        return FakeAuth(user, password, authenticated=self.login_result == "ok")

    # earthaccess.search_data(short_name=, version=, temporal=, bounding_box=, count=)
    def search_data(self, count=-1, **kwargs):
        self.searches.append({"count": count, **kwargs})
        return list(self.granules)

    # earthaccess.download(granules, local_path=, threads=)
    def download(self, granules, local_path=None, provider=None, threads=8, **kwargs):
        self.downloads.append({"granules": list(granules), "local_path": local_path, "threads": threads})
        behaviour = self.plan.pop(0) if self.plan else "ok"
        if isinstance(behaviour, BaseException):
            raise behaviour
        if behaviour in ("empty", "none"):
            return [] if behaviour == "empty" else None
        out = []
        for g in granules:
            path = Path(local_path) / g.name
            write_oco_lite(path, tiny_soundings("oco2", g.day), mission="oco2", day=g.day)
            if behaviour == "truncated":
                data = path.read_bytes()
                path.write_bytes(data[: len(data) // 3])
            out.append(path)
        return out


@pytest.fixture
def env(tmp_path, monkeypatch):
    """No credentials anywhere (tests add what they need); HOME and NETRC inside tmp."""
    home = tmp_path / "home"
    home.mkdir()
    for var in ("EARTHDATA_TOKEN", "EARTHDATA_USERNAME", "EARTHDATA_PASSWORD", "CDSAPI_KEY", "CDSAPI_URL",
                "CDSAPI_RC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    monkeypatch.setattr(earthdata, "_logged_in", None)  # a fresh "process"
    # with_retries binds time.sleep as a default argument when defined, so patching
    # retry.time.sleep alone does not stop the waits: hand the pull a no-wait with_retries too.
    sleeps: list[float] = []
    monkeypatch.setattr(retry_module.time, "sleep", sleeps.append)
    monkeypatch.setattr(pull_module, "with_retries",
                        functools.partial(retry_module.with_retries, sleep=sleeps.append))

    def no_prompt(*a, **k):
        raise AssertionError("an interactive prompt was attempted")

    monkeypatch.setattr(builtins, "input", no_prompt)
    monkeypatch.setattr(getpass, "getpass", no_prompt)
    return SimpleNamespace(home=home, sleeps=sleeps)


@pytest.fixture
def user_env(env, monkeypatch):
    monkeypatch.setenv("EARTHDATA_USERNAME", "someone")
    monkeypatch.setenv("EARTHDATA_PASSWORD", SECRET)
    return env


@pytest.fixture
def fake(monkeypatch):
    """earthaccess with only login/search_data/download replaced; 3 days in the window, plus the
    day before it (CMR's temporal overlap returns it) and a foreign file, both to be left out."""
    granules = [FakeGranule(d) for d in DAYS]
    granules.insert(0, FakeGranule(START - timedelta(days=1)))
    granules.append(FakeGranule(START, name="oco2_L2_Met_31000a_200601_B11008_200612.h5.nc4"))
    fe = FakeEarthaccess(granules)
    for name in ("login", "search_data", "download"):
        monkeypatch.setattr(earthaccess, name, getattr(fe, name))
    return fe


def _settings(tmp_path, **kw):
    return load_settings(data_dir=str(tmp_path / "data"), source="earthdata", **kw)


def _pull(settings, start=START, end=END):
    return pull(settings, products=("oco2",), start=start, end=end,
                remotes={"oco2": earthdata_remote(settings, "oco2")})


def _visible(settings):
    folder = settings.raw_dir / "oco2"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _ok_rows(settings):
    rows = Manifest(settings.manifest_path).load()
    return rows[rows["status"] == "ok"]


def test_login_environment_strategy_once_per_process(tmp_path, user_env, fake):
    settings = _settings(tmp_path)
    assert _pull(settings).n_fetched == 3
    _pull(settings)
    assert fake.logins == [{"strategy": "environment", "persist": False}]


def test_login_netrc_strategy_when_only_netrc_exists(tmp_path, env, fake):
    netrc_file = env.home / ".netrc"
    netrc_file.write_text(f"machine urs.earthdata.nasa.gov login someone password {SECRET}\n")
    netrc_file.chmod(0o600)
    report = _pull(_settings(tmp_path))
    assert not report.failed and report.n_fetched == 3
    assert fake.logins == [{"strategy": "netrc", "persist": False}]


def test_search_uses_configured_collection_window_and_region(tmp_path, user_env, fake):
    settings = _settings(tmp_path, oco2_version="11.2r",
                         region={"name": "box", "west": 100.0, "south": 28.0, "east": 105.5, "north": 33.0})
    _pull(settings)
    assert fake.searches == [{"count": -1, "short_name": "OCO2_L2_Lite_FP", "version": "11.2r",
                              "temporal": ("2020-06-01", "2020-06-03"),
                              "bounding_box": (100.0, 28.0, 105.5, 33.0)}]
    oco3 = earthdata_remote(settings, "oco3")
    assert (oco3.short_name, oco3.version) == ("OCO3_L2_Lite_FP", "10.4r")


def test_list_drops_days_outside_window_and_foreign_names(tmp_path, user_env, fake, caplog):
    remote = earthdata_remote(_settings(tmp_path), "oco2")
    with caplog.at_level(logging.WARNING, logger="tasks.sources.earthdata"):
        granules = remote.list("oco2", START, END)
    assert [g.day for g in granules] == DAYS
    assert all(g.name == oco_lite_name("oco2", g.day, production_time(g.day)) for g in granules)
    assert granules[0].remote_id == f"OCO2_L2_Lite_FP.11.1r:{granules[0].name}"
    assert granules[0].size == int(1.5 * 1024 * 1024) and isinstance(granules[0].handle, FakeGranule)
    assert "oco2_L2_Met" in caplog.text  # the foreign file is named in a warning


@pytest.mark.filterwarnings("ignore:As of version 1.0:FutureWarning")
def test_list_reads_real_earthaccess_datagranule(tmp_path, user_env, monkeypatch):
    name = oco_lite_name("oco2", START, production_time(START))
    record = {"meta": {"concept-id": "G1-GES_DISC", "provider-id": "GES_DISC", "native-id": "x"},
              "umm": {"GranuleUR": f"OCO2_L2_Lite_FP.11.1r:{name}",
                      "RelatedUrls": [{"URL": f"{GES_DISC}/2020/{name}", "Type": "GET DATA"},
                                      {"URL": f"{GES_DISC}/2020/{name}.xml", "Type": "EXTENDED METADATA"}],
                      "DataGranule": {"ArchiveAndDistributionInformation": [
                          {"Name": name, "SizeInBytes": 3 * 1024 * 1024}]}}}
    monkeypatch.setattr(earthaccess, "login", lambda strategy, persist: SimpleNamespace(authenticated=True))
    monkeypatch.setattr(earthaccess, "search_data", lambda **kw: [earthaccess.DataGranule(record)])
    (g,) = EarthdataRemote("OCO2_L2_Lite_FP", "11.1r", (92.35, 26.05, 108.2, 34.32), "oco2").list("oco2", START, END)
    assert (g.name, g.day, g.size) == (name, START, 3 * 1024 * 1024)
    assert g.remote_id == f"OCO2_L2_Lite_FP.11.1r:{name}"


def test_first_pull_fetches_three_second_downloads_nothing(tmp_path, user_env, fake):
    settings = _settings(tmp_path)
    first = _pull(settings)
    names = [g.name for g in fake.granules[1:4]]
    assert first.fetched["oco2"] == names and not first.failed and not first.quarantined
    assert _visible(settings) == names  # real names, no temp files or folders left behind
    assert set(raw_granules(settings, "oco2")) == set(DAYS)
    assert all(d["threads"] == 1 and len(d["granules"]) == 1 for d in fake.downloads)
    rows = _ok_rows(settings)
    assert sorted(rows["remote_id"]) == sorted(f"OCO2_L2_Lite_FP.11.1r:{n}" for n in names)
    assert sorted(rows["day"]) == [d.isoformat() for d in DAYS]
    n_downloads = len(fake.downloads)
    second = _pull(settings)
    assert second.n_fetched == 0 and second.skipped["oco2"] == 3
    assert len(fake.downloads) == n_downloads == 3  # download not called again


@pytest.mark.parametrize("behaviour", ["empty", "none"])
def test_silent_empty_download_is_retried_then_reported(tmp_path, user_env, fake, behaviour):
    settings = _settings(tmp_path)
    fake.plan = [behaviour] * 4
    report = _pull(settings, START, START)
    assert len(fake.downloads) == 4 and len(user_env.sleeps) == 3  # retried with backoff
    assert report.fetched["oco2"] == [] and "no file" in report.failed["oco2"]
    assert _visible(settings) == [] and _ok_rows(settings).empty  # nothing partial visible
    assert _pull(settings, START, START).fetched["oco2"]  # fetched next run


@pytest.mark.parametrize("status", [401, 403, 404])
def test_http_refusal_is_not_retried_and_names_status(tmp_path, user_env, fake, status):
    settings = _settings(tmp_path)
    url = fake.granules[1].url
    fake.plan = [DownloadFailure(f"Download failed for {url}. Status code: {status}")]
    report = _pull(settings, START, START)
    assert len(fake.downloads) == 1 and user_env.sleeps == []
    assert f"HTTP {status}" in report.failed["oco2"] and "PermanentSourceError" in report.failed["oco2"]
    assert _visible(settings) == []


def test_http_503_is_retried(tmp_path, user_env, fake):
    settings = _settings(tmp_path)
    fake.plan = [DownloadFailure("Download failed for x. Status code: 503")] * 2
    report = _pull(settings, START, START)
    assert len(fake.downloads) == 3 and len(user_env.sleeps) == 2
    assert report.fetched["oco2"] == [fake.granules[1].name]
    assert not report.failed


def test_truncated_download_is_quarantined_then_fetched_again(tmp_path, user_env, fake):
    settings = _settings(tmp_path)
    fake.plan = ["truncated"]
    report = _pull(settings, START, START)
    name = fake.granules[1].name
    assert report.fetched["oco2"] == [] and [q["file"] for q in report.quarantined] == [name]
    assert list(settings.quarantine_dir.glob(f"*{name}")) and _visible(settings) == []
    again = _pull(settings, START, START)
    assert again.fetched["oco2"] == [name] and _visible(settings) == [name]


def test_missing_credentials_say_what_to_set(tmp_path, env, fake):
    report = _pull(_settings(tmp_path))
    why = report.failed["oco2"]
    assert "MissingCredentials" in why
    for what in ("EARTHDATA_USERNAME", "EARTHDATA_PASSWORD", "~/.netrc"):
        assert what in why
    assert fake.logins == [] and fake.searches == [] and fake.downloads == []


@pytest.mark.parametrize("outcome", ["reject", "none", "unauthenticated"])
def test_failed_login_is_permanent_and_names_origin(tmp_path, user_env, fake, outcome):
    fake.login_result = outcome
    report = _pull(_settings(tmp_path))
    why = report.failed["oco2"]
    assert "PermanentSourceError" in why and "environment" in why
    assert "EARTHDATA_USERNAME/EARTHDATA_PASSWORD" in why and SECRET not in why
    assert len(fake.logins) == 1 and fake.searches == []  # not retried, nothing searched


def test_password_never_logged_or_stored(tmp_path, user_env, fake, caplog):
    settings = _settings(tmp_path)
    caplog.set_level(logging.DEBUG)
    # A run that succeeds, retries, quarantines and is refused: every path that logs.
    fake.plan = [DownloadFailure("Download failed for x. Status code: 503"), "ok", "truncated",
                 DownloadFailure("Download failed for x. Status code: 401")]
    _pull(settings)
    fake.login_result = "reject"
    earthdata._reset_login()
    _pull(settings)
    assert caplog.records
    for record in caplog.records:
        assert SECRET not in record.getMessage()
        assert SECRET not in repr(record.args)
    assert SECRET not in caplog.text
    files = [p for p in Path(settings.data_dir).rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
