import json
from datetime import date

import pytest

from flows.cli import main
from demo_world import write_gosat_c3s, write_oco_lite
from demo_world.fixtures import tiny_soundings


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    for var in ("EARTHDATA_TOKEN", "EARTHDATA_USERNAME", "EARTHDATA_PASSWORD", "CDSAPI_URL", "CDSAPI_KEY", "NETRC",
                "CDSAPI_RC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)


def test_inspect_prints_one_json_object(tmp_path, capsys):
    path = write_oco_lite(tmp_path, tiny_soundings("oco2", date(2020, 6, 1), n=40), mission="oco2", day=date(2020, 6, 1))
    assert main(["inspect", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "oco2_lite" and info["soundings"] == 46 and info["good"] == 40
    assert 400 < info["xco2_min"] <= info["xco2_mean"] <= info["xco2_max"] < 425
    assert info["time_start"] <= info["time_end"]


def test_inspect_reads_gosat_in_mol_per_mol_as_ppm(tmp_path, capsys):
    path = write_gosat_c3s(tmp_path, tiny_soundings("gosat", date(2020, 6, 1)), xco2_units="mol/mol",
                           day=date(2020, 6, 1))
    assert main(["inspect", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "gosat_c3s" and 400 < info["xco2_mean"] < 425


def test_inspect_rejects_a_foreign_file_naming_it(tmp_path, capsys):
    bad = tmp_path / "notes.nc"
    bad.write_text("not a granule")
    assert main(["inspect", str(bad)]) != 0
    assert "notes.nc" in capsys.readouterr().err


def test_invalid_setting_stops_the_command(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XCO2_GRID_STEP", "zero")
    assert main(["config"]) == 2
    assert "grid_step" in capsys.readouterr().err


def test_sources_check_without_credentials_names_what_to_set(no_credentials, capsys):
    assert main(["sources", "check", "--no-probe"]) == 1
    out = capsys.readouterr().out
    assert "EARTHDATA_USERNAME" in out and "EARTHDATA_PASSWORD" in out and "~/.netrc" in out
    assert "CDSAPI_URL" in out and "CDSAPI_KEY" in out and "~/.cdsapirc" in out


def test_sources_check_with_credentials_never_prints_them(no_credentials, monkeypatch, capsys):
    monkeypatch.setenv("EARTHDATA_USERNAME", "someone")
    monkeypatch.setenv("EARTHDATA_PASSWORD", "pa55-w0rd-secret")
    monkeypatch.setenv("CDSAPI_KEY", "cds-key-secret-42")
    assert main(["sources", "check", "--no-probe", "--json"]) == 0
    out = capsys.readouterr().out
    assert "pa55-w0rd-secret" not in out and "cds-key-secret-42" not in out
    statuses = json.loads(out.strip().splitlines()[-1])
    assert all(s["configured"] for s in statuses)


def test_covariates_import_reprojects_a_user_layer(tmp_path, monkeypatch, capsys):
    import numpy as np
    import rasterio
    from affine import Affine

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XCO2_DATA_DIR", str(tmp_path / "data"))
    src = tmp_path / "dem_3857.tif"
    # ~500 m pixels in Web Mercator around Chengdu (104 E, 30.6 N)
    with rasterio.open(src, "w", driver="GTiff", width=400, height=300, count=1, dtype="float32",
                       crs="EPSG:3857", transform=Affine(500, 0, 11_480_000, 0, -500, 3_640_000)) as dst:
        dst.write(np.full((300, 400), 512.0, np.float32), 1)
    monkeypatch.setenv("XCO2_REGION__NAME", "chengdu")
    for k, v in {"WEST": "103.8", "SOUTH": "30.4", "EAST": "104.3", "NORTH": "30.9"}.items():
        monkeypatch.setenv(f"XCO2_REGION__{k}", v)
    assert main(["covariates", "import", "elevation", str(src)]) == 0
    out = tmp_path / "data" / "raw" / "static" / "elevation.tif"
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 4326
        values = ds.read(1, masked=True)
        assert abs(float(values.mean()) - 512.0) < 1e-3
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    assert main(["covariates", "import", "elevation", str(bad)]) == 2
    assert "notes.txt" in capsys.readouterr().err


NETWORK_UNUSED = {"share": 0.0, "network_used": False,
                  "in_map": "no (share 0.00: maps are background + daily-anomaly field)",
                  "reading": "network share 0.00: the maps are background + daily-anomaly field (the network is not used)"}


@pytest.fixture
def wide_console(monkeypatch):
    """The CLI's console into a buffer, wide enough that no table cell wraps."""
    import io

    from rich.console import Console

    from flows import cli

    buffer = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=buffer, width=400, color_system=None))
    return buffer


def test_the_demo_summary_says_whether_the_maps_use_the_network(wide_console):
    from flows.cli import _print_demo_summary

    summary = {
        "region": {"name": "box", "west": 105.7, "east": 106.2, "south": 30.2, "north": 30.7},
        "grid": {"nx": 50, "ny": 50, "step": 0.01}, "window": ["2020-06-01", "2020-06-06"],
        "samples": 900, "samples_days": 6,
        "gosat_fit": {"intercept": 0.1, "slope": 1.0, "n_collocations": 40, "method": "ols", "fit_id": "f1"},
        "archive_days": ["2020-06-06"], "archive_root": "/tmp/archive",
        "model": {"name": "xco2-resnet-lstm", "version": 1, "alias": "champion", "epochs": 3, "best_epoch": 2,
                  "onnx_parity_max_abs_ppm": 1e-6, "network_share": NETWORK_UNUSED},
        "holdouts": {}, "promotion_holdout": "random holdout", "truth_accuracy": None, "comparison": None,
        "tracking_uri": "sqlite:///mlflow.db", "timings": {"retrain": "1 s"},
    }
    _print_demo_summary(summary)
    lines = [line for line in wide_console.getvalue().splitlines() if "network share" in line]
    assert len(lines) == 1 and NETWORK_UNUSED["reading"] in lines[0]


def test_the_retrain_summary_says_whether_the_maps_use_the_network(wide_console):
    from flows.cli import _print_retrain_summary

    _print_retrain_summary({"version": 4, "alias": "challenger", "decision": "RMSE 1.0 does not beat v3",
                            "network_share": NETWORK_UNUSED})
    assert wide_console.getvalue().splitlines() == [
        "version 4: alias 'challenger' (RMSE 1.0 does not beat v3)", NETWORK_UNUSED["reading"]]
