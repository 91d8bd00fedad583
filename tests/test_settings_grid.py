import pytest

from tasks.gridding.geometry import Grid
from tasks.settings import ConfigError, Region, SourceMode, load_settings


def test_defaults_are_the_documented_ones(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.region.name == "sichuan"
    assert (s.region.west, s.region.east, s.region.south, s.region.north) == (92.35, 108.20, 26.05, 34.32)
    assert s.grid_step == 0.01
    assert str(s.data_dir) == "xco2-data"
    assert s.archive_root == s.data_dir / "archive"
    assert s.source == SourceMode.demo
    assert s.tracking_uri == f"sqlite:///{(tmp_path / 'xco2-data' / 'mlflow.db')}"
    assert s.registered_model_name == "xco2-resnet-lstm"


def test_environment_and_toml(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "xco2.toml").write_text(
        'registered_model_name = "from-toml"\ngrid_step = 0.02\n[region]\nname = "box"\nwest = 10\n'
        "south = 40\neast = 11\nnorth = 41\n"
    )
    monkeypatch.setenv("XCO2_GRID_STEP", "0.05")
    s = load_settings()
    assert s.registered_model_name == "from-toml"
    assert s.grid_step == 0.05  # the environment wins over the file
    assert s.region == Region(name="box", west=10, south=40, east=11, north=41)


@pytest.mark.parametrize(
    "env, named",
    [
        ({"XCO2_GRID_STEP": "-0.01"}, "grid_step"),
        ({"XCO2_SOURCE": "ftp"}, "source"),
        ({"XCO2_REGION__WEST": "120"}, "region"),
        ({"XCO2_SOURCE": "local"}, "XCO2_LOCAL_DIR"),
        ({"XCO2_MAX_EPOCHS": "0"}, "max_epochs"),
    ],
)
def test_invalid_setting_is_named(monkeypatch, tmp_path, env, named):
    monkeypatch.chdir(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=named):
        load_settings()


def test_missing_config_file_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("XCO2_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="XCO2_CONFIG"):
        load_settings()


def test_sichuan_grid_is_aligned():
    g = Grid.for_region(Region(), 0.01)
    assert (g.nx, g.ny) == (1585, 827)
    assert g.transform.a == 0.01 and g.transform.e == -0.01
    assert g.transform.c == pytest.approx(92.35) and g.transform.f == pytest.approx(34.32)
    assert g.lats[0] == pytest.approx(34.315) and g.lons[-1] == pytest.approx(108.195)


def test_grid_snaps_outwards_to_the_lattice():
    g = Grid.for_region(Region(name="odd", west=100.004, south=30.001, east=100.497, north=30.4999), 0.01)
    assert (g.west, g.south, g.east, g.north) == (100.0, 30.0, 100.5, 30.5)


def test_cell_ids_round_trip():
    g = Grid(west=104.0, south=30.0, east=104.5, north=30.5, step=0.01)
    lat, lon = g.centre(*g.cell_rowcol(g.cell_id([0, 49, 10], [0, 49, 20])))
    row, col = g.rowcol(lat, lon)
    assert row.tolist() == [0, 49, 10] and col.tolist() == [0, 49, 20]
    assert g.contains([30.25, 29.0], [104.25, 104.25]).tolist() == [True, False]


def test_settings_name_the_raw_folders_and_the_manifest(tmp_path):
    # ERA5 is cut to the region's box, so two regions sharing a data dir keep their own; satellite
    # granules are global files, shared.
    sichuan = load_settings(data_dir=str(tmp_path))
    other = load_settings(data_dir=str(tmp_path), region=Region(name="testbox", west=103, south=30, east=104,
                                                                 north=31, boundary="none"))
    assert sichuan.raw("era5") == tmp_path / "raw" / "era5" / "sichuan"
    assert other.raw("era5") == tmp_path / "raw" / "era5" / "testbox"
    assert sichuan.raw("oco2") == other.raw("oco2") == tmp_path / "raw" / "oco2"
    assert sichuan.raw("static") == tmp_path / "raw" / "static"
    assert sichuan.manifest_path == other.manifest_path == tmp_path / "raw" / "manifest.parquet"
