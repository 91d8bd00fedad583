"""GOSAT and ERA5 from the Copernicus CDS (tasks.sources.cds), offline.

Only cdsapi is faked: `cdsapi.Client` is replaced by a class that records each
`retrieve(name, request, target)` and writes the answer in the real formats (zip / tar.gz of the
daily C3S NetCDF, ERA5 ZIP of instant + accum files, old-CDS NetCDF-3), or raises the errors the
CDS raises. Everything else (pull, manifest, retries, readers) is the real code.
"""

from __future__ import annotations

import copy
import importlib
import logging
import tarfile
import tempfile
import zipfile
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
import requests

from demo_world.fixtures import tiny_era5_hourly, tiny_soundings
from demo_world.writers import write_era5_old_cds, write_era5_zip, write_gosat_c3s
from tasks.readers import read_era5, read_soundings
from tasks.readers.era5_layout import ERA5_ALIASES, ERA5_VARIABLES
from tasks.readers.names import gosat_c3s_name
from tasks.settings import Region, load_settings
from tasks.sources import Manifest, pull
from tasks.sources.credentials import MissingCredentials
from tasks.sources.remote import GranuleUnavailable
from tasks.sources.retry import is_permanent

cds = importlib.import_module("tasks.sources.cds")
retry_module = importlib.import_module("tasks.sources.retry")

DAY = date(2020, 6, 1)
SECRET = "abcd-1234-secret"
GOSAT = "satellite-carbon-dioxide"
ERA5 = "reanalysis-era5-single-levels"
REQUEST_VARIABLES = ["evaporation", "total_precipitation", "surface_pressure", "2m_temperature",
                     "2m_dewpoint_temperature", "10m_u_component_of_wind",
                     "10m_v_component_of_wind", "sunshine_duration"]


# --------------------------------------------------------------------------------------------
# The fake CDS


def _day(request: dict) -> date:
    one = {k: (v[0] if isinstance(v, list) else v) for k, v in request.items() if k in ("year", "month", "day")}
    return date(int(one["year"]), int(one["month"]), int(one["day"]))


class FakeCds:
    """Stands in for cdsapi.Client: records requests, answers with respond(name, request, target)."""

    def __init__(self, monkeypatch, respond):
        self.requests: list[tuple[str, dict]] = []
        self.clients: list[dict] = []
        self.respond = respond
        fake = self

        class Client:
            def __init__(self, url=None, key=None, quiet=False, progress=True, **kwargs):
                fake.clients.append({"url": url, "quiet": quiet, "progress": progress,
                                     "key_given": bool(key), **{k: v for k, v in kwargs.items()
                                                                if not k.endswith("callback")}})
                # As cdsapi 0.7 does at start-up: its settings, key included, at debug level.
                if kwargs.get("debug_callback"):
                    kwargs["debug_callback"]("CDSAPI %s", {"url": url, "key": key})
                if kwargs.get("warning_callback"):
                    kwargs["warning_callback"]("token %s: this CDS message is a warning", key)

            def retrieve(self, name, request, target=None):
                fake.requests.append((name, copy.deepcopy(request)))
                fake.respond(name, request, Path(target))
                return target

        monkeypatch.setattr(cds.cdsapi, "Client", Client)

    def days(self, name: str | None = None) -> list[date]:
        return [_day(r) for n, r in self.requests if name in (None, n)]


def http_error(status: int, text: str) -> requests.HTTPError:
    """What requests/ecmwf-datastores raise for an HTTP error answer."""
    response = requests.Response()
    response.status_code = status
    response.reason = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
                       503: "Service Unavailable"}.get(status, "Error")
    response.url = "https://cds.example.invalid/api/retrieve/v1/jobs/0f1e/results"
    kind = "Client" if status < 500 else "Server"
    return requests.HTTPError(f"{status} {kind} Error: {response.reason} for url: {response.url}\n{text}",
                              response=response)


def gosat_daily(folder: Path, day: date, units: str = "1e-9") -> Path:
    return write_gosat_c3s(folder, tiny_soundings("gosat", day), xco2_units=units, day=day)


def gosat_zip(name, request, target, *, units="1e-9"):
    assert name == GOSAT
    day = _day(request)
    with tempfile.TemporaryDirectory() as tmp:
        daily = gosat_daily(Path(tmp), day, units)
        other = gosat_daily(Path(tmp), day - timedelta(days=1), units)  # a neighbour, to be ignored
        with zipfile.ZipFile(target, "w") as zf:
            zf.write(other, other.name)
            zf.write(daily, daily.name)


def gosat_tgz(name, request, target, *, units="mol/mol"):
    assert name == GOSAT
    day = _day(request)
    with tempfile.TemporaryDirectory() as tmp:
        daily = gosat_daily(Path(tmp), day, units)
        with tarfile.open(target, "w:gz") as tf:
            tf.add(daily, arcname=f"c3s_gosat_l2/{daily.name}")


def era5_answer(layout_of_day, expver="0001"):
    """ERA5 on the requested area; layout_of_day(day) -> 'zip' (new CDS) or 'old' (old CDS)."""

    def respond(name, request, target):
        assert name == ERA5
        day = _day(request)
        north, west, south, east = request["area"]
        hourly = tiny_era5_hourly(day, n_days=1, bbox=(west, south, east, north), extra_step=False,
                                  expver=expver)
        if layout_of_day(day) == "zip":
            write_era5_zip(target, hourly)
        else:
            write_era5_old_cds(target, hourly)

    return respond


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def env(tmp_path, monkeypatch):
    """CDS credentials from the environment only (no ~/.cdsapirc of the person running the tests)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CDSAPI_RC", str(tmp_path / "home" / ".cdsapirc"))
    monkeypatch.setenv("CDSAPI_URL", "https://cds.example.invalid/api")
    monkeypatch.setenv("CDSAPI_KEY", SECRET)


@pytest.fixture
def slept(monkeypatch):
    """The pull's backoff sleeps, recorded instead of slept."""
    delays: list[float] = []
    monkeypatch.setattr(retry_module.time, "sleep", delays.append)
    return delays


@pytest.fixture
def settings(tmp_path, env, slept):
    return load_settings(data_dir=str(tmp_path / "data"), source="earthdata")


def pull_gosat(settings, start, end, today=DAY + timedelta(days=400)):
    return pull(settings, products=("gosat",), start=start, end=end,
                remotes={"gosat": cds.cds_remote(settings, "gosat", today=today)})


def pull_era5(settings, start, end, today):
    return pull(settings, products=("era5",), start=start, end=end,
                remotes={"era5": cds.cds_remote(settings, "era5", today=today)})


# --------------------------------------------------------------------------------------------
# GOSAT


def test_gosat_zip_request_unpacked_under_real_name_and_second_pull_asks_nothing(settings, monkeypatch):
    fake = FakeCds(monkeypatch, gosat_zip)
    report = pull_gosat(settings, DAY, DAY)

    name = gosat_c3s_name(DAY)  # 20200601-C3S-L2_GHG-GHG_PRODUCTS-TANSO-GOSAT-OCFP-DAILY-v7.3.nc
    assert report.fetched["gosat"] == [name] and not report.failed
    [(dataset, request)] = fake.requests
    assert dataset == GOSAT
    assert request["processing_level"] == ["level_2"] and request["variable"] == "xco2"
    assert request["sensor_and_algorithm"] == "tanso_fts_ocfp" == settings.gosat_algorithm
    assert request["version"] == "7_3" == settings.gosat_version
    assert (request["year"], request["month"], request["day"]) == (["2020"], ["06"], ["01"])
    assert request["data_format"] == "zip"  # the archive-format key
    assert fake.clients[0]["quiet"] is True and fake.clients[0]["progress"] is False
    assert fake.clients[0]["url"] == "https://cds.example.invalid/api" and fake.clients[0]["key_given"]

    raw = settings.raw_dir / "gosat"
    assert sorted(p.name for p in raw.iterdir()) == [name]  # no scratch left, neighbour day ignored
    df = read_soundings(raw / name)
    good = df[df["quality_flag"] == 0]
    assert len(good) == 40 and good["xco2"].between(400, 425).all()
    rows = Manifest(settings.manifest_path).load()
    assert list(rows["remote_id"]) == [f"{GOSAT}:tanso_fts_ocfp:7_3:2020-06-01"]

    again = pull_gosat(settings, DAY, DAY)
    assert again.n_fetched == 0 and again.skipped["gosat"] == 1 and len(fake.requests) == 1


def test_gosat_tar_gz_with_mole_fractions_reads_in_ppm(settings, monkeypatch):
    FakeCds(monkeypatch, gosat_tgz)
    report = pull_gosat(settings, DAY, DAY + timedelta(days=1))
    assert report.fetched["gosat"] == [gosat_c3s_name(DAY), gosat_c3s_name(DAY + timedelta(days=1))]
    df = read_soundings(settings.raw_dir / "gosat" / gosat_c3s_name(DAY))
    good = df[df["quality_flag"] == 0]
    assert np.allclose(good["xco2"].mean(), 412.0, atol=1.0)  # written as ~4.12e-4 mol/mol


def test_gosat_day_without_data_is_unavailable_not_a_failure(settings, monkeypatch):
    answers = {
        DAY: "archive without that day",
        DAY + timedelta(days=1): "empty archive",
        DAY + timedelta(days=2): http_error(400, "The job has failed.\nThe job failed with: "
                                                 "MultiAdaptorNoDataError: No data found"),
        DAY + timedelta(days=3): http_error(400, "invalid request\nRequest has not produced a valid "
                                                 "combination of values, please check your selection."),
        DAY + timedelta(days=4): "data",
    }

    def respond(name, request, target):
        day = _day(request)
        answer = answers[day]
        if isinstance(answer, Exception):
            raise answer
        if answer == "data":
            return gosat_zip(name, request, target)
        with zipfile.ZipFile(target, "w") as zf:
            if answer == "archive without that day":
                with tempfile.TemporaryDirectory() as tmp:
                    other = gosat_daily(Path(tmp), day - timedelta(days=30))
                    zf.write(other, other.name)

    fake = FakeCds(monkeypatch, respond)
    report = pull_gosat(settings, DAY, DAY + timedelta(days=4))
    assert report.unavailable["gosat"] == 4 and not report.failed
    assert report.fetched["gosat"] == [gosat_c3s_name(DAY + timedelta(days=4))]
    assert sorted(fake.days()) == sorted(answers)  # each day asked once: no retry storm
    rows = Manifest(settings.manifest_path).load()
    assert sorted(rows["status"]) == ["ok"] + ["unavailable"] * 4
    assert "no daily file for 2020-06-01" in " ".join(rows["problem"])

    pull_gosat(settings, DAY, DAY + timedelta(days=4))
    assert len(fake.requests) == 5  # not asked again within unavailable_recheck_days

    remote = cds.cds_remote(settings, "gosat")  # the remote itself raises GranuleUnavailable
    granule = remote.list("gosat", DAY, DAY)[0]
    answers[DAY] = answers[DAY + timedelta(days=2)]
    with pytest.raises(GranuleUnavailable, match="MultiAdaptorNoDataError"):
        remote.fetch(granule, settings.data_dir / "scratch.nc")
    assert not (settings.data_dir / "scratch.nc").exists()


# --------------------------------------------------------------------------------------------
# ERA5


def test_era5_request_and_zip_and_old_cds_answers_are_stored_and_read(settings, monkeypatch):
    next_day = DAY + timedelta(days=1)
    fake = FakeCds(monkeypatch, era5_answer(lambda d: "zip" if d == DAY else "old"))
    report = pull_era5(settings, DAY, next_day, today=DAY + timedelta(days=30))

    names = [f"era5_single_levels_{d:%Y%m%d}.nc" for d in (DAY, next_day)]
    assert report.fetched["era5"] == names and not report.failed
    assert fake.days(ERA5) == [DAY, next_day]
    request = fake.requests[0][1]
    assert request["product_type"] == ["reanalysis"]
    assert request["variable"] == REQUEST_VARIABLES
    assert sorted(ERA5_ALIASES[v] for v in request["variable"]) == sorted(ERA5_VARIABLES)
    assert request["time"] == [f"{h:02d}:00" for h in range(24)]
    # Sichuan 92.35..108.20 E, 26.05..34.32 N, plus 0.5 degrees, rounded outwards to 0.25.
    assert request["area"] == [35.0, 91.75, 25.5, 108.75]
    assert request["data_format"] == "netcdf" and request["download_format"] == "unarchived"
    assert (request["year"], request["month"], request["day"]) == (["2020"], ["06"], ["01"])

    raw = settings.raw("era5")
    zip_file, old_file = (raw / n for n in names)
    assert zipfile.is_zipfile(zip_file)  # stored as it came, under the .nc name
    assert old_file.read_bytes()[:3] == b"CDF"  # NetCDF-3, old CDS
    for path in (zip_file, old_file):
        hourly = read_era5(path)
        assert hourly.sizes["time"] == 24 and set(ERA5_VARIABLES) <= set(hourly.data_vars)
        assert float(hourly.latitude.min()) == 25.5 and float(hourly.latitude.max()) == 35.0
        assert float(hourly.longitude.min()) == 91.75 and float(hourly.longitude.max()) == 108.75
    assert cds.era5_expvers(zip_file) == {"0001"} and not cds.is_preliminary(zip_file)


def test_era5_days_newer_than_the_latency_are_not_requested(settings, monkeypatch):
    fake = FakeCds(monkeypatch, era5_answer(lambda d: "zip"))
    today = DAY + timedelta(days=7)
    remote = cds.cds_remote(settings, "era5", today=today)
    listed = remote.list("era5", DAY, today + timedelta(days=1))
    assert [g.day for g in listed] == [DAY, DAY + timedelta(days=1), DAY + timedelta(days=2)]
    assert listed[0].remote_id == f"{ERA5}:2020-06-01:era5t"
    report = pull(settings, products=("era5",), start=DAY, end=today + timedelta(days=1),
                  remotes={"era5": remote})
    assert report.n_fetched == 3 and fake.days() == [g.day for g in listed]


def test_era5_day_that_ages_past_final_after_days_is_fetched_again_and_replaced(tmp_path, settings, monkeypatch):
    path = settings.raw("era5") / f"era5_single_levels_{DAY:%Y%m%d}.nc"
    fake = FakeCds(monkeypatch, era5_answer(lambda d: "zip", expver="0005"))
    first = pull_era5(settings, DAY, DAY, today=DAY + timedelta(days=10))
    assert first.n_fetched == 1 and cds.is_preliminary(path)
    assert pull_era5(settings, DAY, DAY, today=DAY + timedelta(days=60)).n_fetched == 0  # still ERA5T age

    # 91 days on the id asks for final data; the CDS still serves ERA5T: asked again later.
    late = DAY + timedelta(days=91)
    still = pull_era5(settings, DAY, DAY, today=late)
    assert still.unavailable["era5"] == 1 and not still.failed and cds.is_preliminary(path)
    assert len(fake.requests) == 2

    eager = load_settings(data_dir=str(tmp_path / "data"), source="earthdata", unavailable_recheck_days=0)
    fake.respond = era5_answer(lambda d: "zip", expver="0001")
    final = pull_era5(eager, DAY, DAY, today=late)
    assert final.fetched["era5"] == [path.name] and len(fake.requests) == 3
    assert cds.era5_expvers(path) == {"0001"} and not cds.is_preliminary(path)
    rows = Manifest(settings.manifest_path).load().set_index("remote_id")
    assert rows.loc[f"{ERA5}:2020-06-01:final", "status"] == "ok"
    assert pull_era5(eager, DAY, DAY, today=late + timedelta(days=1)).n_fetched == 0


def test_era5_not_yet_available_answer_is_unavailable(settings, monkeypatch):
    def respond(name, request, target):
        raise http_error(400, "The job has failed.\nMultiAdaptorNoDataError: None of the data you "
                              "have requested is available yet, please revise the period requested. "
                              "The latest date available for this dataset is: 2020-05-30")

    FakeCds(monkeypatch, respond)
    report = pull_era5(settings, DAY, DAY, today=DAY + timedelta(days=5))
    assert report.unavailable["era5"] == 1 and not report.failed


# --------------------------------------------------------------------------------------------
# Failures, credentials, secrets


@pytest.mark.parametrize("status, text", [
    (401, "Authentication failed"),
    (403, "required licences not accepted\nNot all the required licences have been accepted; please "
          "visit the dataset page to accept the required licence(s)."),
    (404, "Not Found"),
])
def test_refusals_are_not_retried(settings, monkeypatch, slept, status, text):
    def respond(name, request, target):
        raise http_error(status, text)

    fake = FakeCds(monkeypatch, respond)
    report = pull_gosat(settings, DAY, DAY)
    assert len(fake.requests) == 1 and slept == []
    message = report.failed["gosat"]
    assert "PermanentSourceError" in message and str(status) in message
    if status == 403:
        assert "accept" in message and "licence" in message
        assert f"https://cds.climate.copernicus.eu/datasets/{GOSAT}?tab=download#manage-licences" in message
    if status == 401:
        assert "CDSAPI_KEY" in message and "~/.cdsapirc" in message


def test_server_errors_and_lost_connections_are_retried(settings, monkeypatch, slept):
    failures = [http_error(503, "Service Unavailable"), requests.ConnectionError("Connection reset by peer"),
                http_error(502, "Bad Gateway")]

    def respond(name, request, target):
        if failures:
            raise failures.pop(0)
        gosat_zip(name, request, target)

    fake = FakeCds(monkeypatch, respond)
    report = pull_gosat(settings, DAY, DAY)
    assert report.fetched["gosat"] == [gosat_c3s_name(DAY)] and not report.failed
    assert len(fake.requests) == 4 and len(slept) == 3  # three transient failures, backed off


def test_error_classification():
    cases = {
        401: True, 403: True, 404: True, 400: True, 500: False, 502: False, 503: False, 429: False,
    }
    for status, permanent in cases.items():
        mapped = cds.classify_error(http_error(status, "x"), cds.ERA5_DATASET, DAY)
        assert is_permanent(mapped) is permanent, status
        assert mapped.status_code == status
    assert not is_permanent(cds.classify_error(requests.ConnectionError("reset"), ERA5, DAY))
    assert not is_permanent(cds.classify_error(requests.Timeout("read timed out"), ERA5, DAY))
    legacy = Exception("To access this resource, you first need to accept the terms of 'Licence to "
                       "use Copernicus Products' at https://cds.climate.copernicus.eu/...")
    assert isinstance(cds.classify_error(legacy, ERA5, DAY), cds.LicenceNotAccepted)
    # The constraint refusal is 'no data' for GOSAT days, but a real error for ERA5 requests.
    refusal = http_error(400, "Request has not produced a valid combination of values")
    assert isinstance(cds.classify_error(refusal, GOSAT, DAY), GranuleUnavailable)
    assert is_permanent(cds.classify_error(refusal, ERA5, DAY))
    # 'no data' wording on a 5xx is an outage, not an answer.
    assert not isinstance(cds.classify_error(http_error(503, "no data yet"), ERA5, DAY), GranuleUnavailable)


def test_missing_credentials_name_what_to_set(tmp_path, settings, monkeypatch, slept):
    monkeypatch.delenv("CDSAPI_KEY")
    monkeypatch.delenv("CDSAPI_URL")
    fake = FakeCds(monkeypatch, gosat_zip)
    report = pull_gosat(settings, DAY, DAY)
    message = report.failed["gosat"]
    assert "MissingCredentials" in message
    assert "CDSAPI_URL" in message and "CDSAPI_KEY" in message and "~/.cdsapirc" in message
    assert fake.clients == [] and fake.requests == [] and slept == []  # said once, not retried
    remote = cds.cds_remote(settings, "era5", today=DAY + timedelta(days=30))
    granule = remote._granule(DAY)
    with pytest.raises(MissingCredentials, match="CDSAPI_KEY"):
        remote.fetch(granule, tmp_path / "x.nc")


def test_the_key_appears_in_no_log_record_and_no_file(settings, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)

    def respond(name, request, target):
        day = _day(request)
        if name == GOSAT and day == DAY + timedelta(days=1):
            raise http_error(401, f"Authentication failed for token {SECRET}")
        if name == GOSAT and day == DAY + timedelta(days=2):
            raise http_error(503, f"gateway overloaded (token {SECRET})")
        if name == GOSAT:
            return gosat_zip(name, request, target)
        return era5_answer(lambda d: "zip")(name, request, target)

    FakeCds(monkeypatch, respond)
    gosat = pull_gosat(settings, DAY, DAY + timedelta(days=2))
    era5 = pull_era5(settings, DAY, DAY, today=DAY + timedelta(days=30))
    assert gosat.fetched["gosat"] and era5.fetched["era5"] and gosat.failed["gosat"]
    assert any("cdsapi:" in r.getMessage() for r in caplog.records)  # cdsapi's messages do arrive

    for record in caplog.records:
        assert SECRET not in record.getMessage(), record.getMessage()
        assert SECRET not in repr(record.args) and SECRET not in (record.exc_text or "")
    assert SECRET not in caplog.text
    assert SECRET not in repr(gosat) and SECRET not in repr(era5)
    files = [p for p in settings.data_dir.rglob("*") if p.is_file()]
    assert len(files) >= 3  # the two granules and the manifest
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path


def test_names_area_and_ids():
    assert cds.gosat_file_name(DAY, "tanso_fts_ocfp", "7_3") == gosat_c3s_name(DAY)
    assert cds.gosat_file_name(DAY, "tanso_fts_srfp", "2_3_8").endswith("-TANSO-GOSAT-SRFP-DAILY-v2.3.8.nc")
    assert cds.era5_area(Region()) == [35.0, 91.75, 25.5, 108.75]
    assert cds.era5_area(Region(name="edge", west=-180, south=-90, east=180, north=90)) == [90.0, -180.0, -90.0, 180.0]
    settings = load_settings(data_dir="unused", source="earthdata")
    era5 = cds.cds_remote(settings, "era5", today=date(2021, 1, 1))
    assert era5._granule(date(2020, 10, 2)).remote_id.endswith(":final")  # 91 days old
    assert era5._granule(date(2020, 10, 3)).remote_id.endswith(":era5t")  # 90 days old
    with pytest.raises(ValueError):
        cds.cds_remote(settings, "oco2")
