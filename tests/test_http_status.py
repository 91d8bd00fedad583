"""tasks.sources.retry.http_status: the one HTTP-status parser of every source (CDS, Earthdata)."""

from __future__ import annotations

import pytest
import requests

from tasks.sources.cds import classify_error, CdsError, CdsPermanentError
from tasks.sources.earthdata import EarthdataError, _download_error
from tasks.sources.retry import http_status


def _http_error(code: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = code
    return requests.HTTPError(f"{code} Error for url: https://example.invalid/x", response=response)


class _WithStatus(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@pytest.mark.parametrize("exc, expected", [
    (_http_error(503), 503),                                   # requests: the response's status
    (CdsError("CDS down", status_code=502), 502),              # our own errors keep status_code
    (_WithStatus("aiohttp-style", 429), 429),                  # `status` attribute
    (Exception("404 Client Error: Not Found for url: x"), 404),  # requests' text, no response
    (Exception("500 Server Error: Internal for url: x"), 500),
    (Exception("Download failed with status code: 503 after 400 bytes"), 503),  # earthaccess
    (Exception("server said 403 Forbidden"), 403),             # a bare permanent code
    (Exception("server said 503 busy"), None),                 # a bare number proves nothing
    (Exception("connection reset by peer"), None),
])
def test_http_status_reads_attributes_then_the_message(exc, expected):
    assert http_status(exc) == expected


def test_the_specific_form_wins_over_a_bare_code_elsewhere_in_the_text():
    assert http_status(Exception("tried 404 times: 502 Server Error: Bad Gateway")) == 502


def test_cds_and_earthdata_classify_with_it():
    assert isinstance(classify_error(Exception("404 Client Error: Not Found"), "reanalysis-era5-single-levels",
                                     None), CdsPermanentError)
    transient = classify_error(Exception("502 Server Error: Bad Gateway"), "reanalysis-era5-single-levels", None)
    assert isinstance(transient, CdsError) and transient.status_code == 502
    error = _download_error(Exception("request failed, status code: 429"), "oco2_LtCO2_200601.nc4")
    assert isinstance(error, EarthdataError) and error.status_code == 429
