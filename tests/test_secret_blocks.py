"""Credentials kept in Prefect Secret blocks (a real Prefect test server)."""

import os

import pytest

from tasks.sources.credentials import apply_secret_blocks, cds_credentials, earthdata_login


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in ("EARTHDATA_TOKEN", "EARTHDATA_USERNAME", "EARTHDATA_PASSWORD", "CDSAPI_URL", "CDSAPI_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    yield
    for var in ("EARTHDATA_TOKEN", "EARTHDATA_USERNAME", "EARTHDATA_PASSWORD", "CDSAPI_URL", "CDSAPI_KEY"):
        os.environ.pop(var, None)


def test_secret_blocks_supply_credentials(prefect_harness, clean_env, caplog):
    from prefect.blocks.system import Secret

    Secret(value={"username": "someone", "password": "bl0ck-pa55"}).save("xco2-earthdata", overwrite=True)
    Secret(value={"url": "https://cds.example/api", "key": "bl0ck-cds-key"}).save("xco2-cds", overwrite=True)
    assert apply_secret_blocks("xco2-earthdata", "xco2-cds") == ["xco2-earthdata", "xco2-cds"]
    assert earthdata_login().strategy == "environment"
    creds = cds_credentials()
    assert creds.url == "https://cds.example/api" and creds.key == "bl0ck-cds-key"
    assert not any("bl0ck" in r.getMessage() for r in caplog.records)


def test_a_token_string_block(prefect_harness, clean_env):
    from prefect.blocks.system import Secret

    Secret(value="edl-token-123").save("xco2-earthdata-token", overwrite=True)
    apply_secret_blocks("xco2-earthdata-token", None)
    assert os.environ["EARTHDATA_TOKEN"] == "edl-token-123" and earthdata_login().origin == "EARTHDATA_TOKEN"
