"""Issue 20, item 2: a data dir remembers what it was made for (`<data dir>/data-dir.toml`).

The demo records its region, source and CPU-sized training; every later command and the stack's
deployments read them with no settings of their own; an explicit region or source that disagrees
is an error naming both, exit 2, before any file is touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployments.stack import StackConfig, command_prefect_database
from flows import cli
from flows.demo import SMALL_REGION, DemoOptions
from tasks.regions.boundary import SHIPPED_BOUNDARIES
from tasks.settings import (DATA_DIR_RECORD, ConfigError, Region, SourceMode, load_settings, read_data_dir_record,
                            write_data_dir_record)
from tasks.steps.demo import clear_previous_demo, demo_overrides, record_demo_data_dir


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def demo_dir(clean_env, tmp_path) -> Path:
    """A data dir recorded as the small demo's (`make demo`): what run_demo writes."""
    data = tmp_path / "xco2-data"
    opts = DemoOptions(data_dir=data, small=True, archive_days=7)
    overrides = demo_overrides(opts)
    record_demo_data_dir(load_settings(**overrides), opts, overrides)
    return data


def test_the_demo_records_region_source_and_its_training(demo_dir):
    text = (demo_dir / DATA_DIR_RECORD).read_text()
    assert 'boundary = "shipped:sichuan"' in text  # by name: the image's copy lives elsewhere
    record = read_data_dir_record(demo_dir)
    assert record["source"] == "demo" and record["region"]["name"] == SMALL_REGION.name
    assert record["max_epochs"] == DemoOptions().max_epochs and record["comparison_protocols"] == []
    assert "archive_lookback_days" not in record and "data_dir" not in record
    assert record["today"] == DemoOptions().end  # a run without dates updates the world's last days


def test_commands_without_settings_use_the_recorded_region_and_source(demo_dir, clean_env):
    clean_env.setenv("XCO2_DATA_DIR", str(demo_dir))
    settings = load_settings()
    assert settings.region == SMALL_REGION
    assert settings.region.boundary == str(SHIPPED_BOUNDARIES["sichuan"])
    assert settings.source == SourceMode.demo and settings.max_epochs == DemoOptions().max_epochs


def test_a_recorded_default_gives_way_to_an_explicit_setting(demo_dir, clean_env):
    clean_env.setenv("XCO2_DATA_DIR", str(demo_dir))
    clean_env.setenv("XCO2_MAX_EPOCHS", "50")
    assert load_settings().max_epochs == 50


def test_an_explicit_region_that_agrees_in_part_is_no_conflict(demo_dir, clean_env):
    clean_env.setenv("XCO2_DATA_DIR", str(demo_dir))
    clean_env.setenv("XCO2_REGION__NAME", SMALL_REGION.name)
    clean_env.setenv("XCO2_REGION__WEST", str(SMALL_REGION.west))
    assert load_settings().region == SMALL_REGION


def test_an_explicit_region_that_disagrees_names_both(demo_dir, clean_env):
    clean_env.setenv("XCO2_DATA_DIR", str(demo_dir))
    clean_env.setenv("XCO2_REGION__NAME", "sichuan")
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert "name=sichuan from XCO2_* variables" in message
    assert f"name={SMALL_REGION.name}" in message and str(demo_dir / DATA_DIR_RECORD) in message


def test_a_configuration_file_source_that_disagrees_names_the_file(demo_dir, clean_env, tmp_path):
    config = tmp_path / "other.toml"
    config.write_text(f'data_dir = "{demo_dir}"\nsource = "earthdata"\n')
    clean_env.setenv("XCO2_CONFIG", str(config))
    with pytest.raises(ConfigError, match=rf"source 'earthdata' from {config} conflicts with source 'demo'"):
        load_settings()


def test_the_command_line_stops_with_exit_2_before_touching_a_file(demo_dir, clean_env, capsys):
    clean_env.setenv("XCO2_DATA_DIR", str(demo_dir))
    clean_env.setenv("XCO2_REGION__NAME", "sichuan")
    before = _tree(demo_dir)
    for argv in (["daily"], ["backfill", "--start", "2020-06-01", "--end", "2020-06-02"], ["config"]):
        assert cli.main(argv) == 2, argv
        assert "conflicts with region" in capsys.readouterr().err
    assert _tree(demo_dir) == before


def test_settings_passed_in_code_replace_the_record_whole(demo_dir):
    other = Region(name="elsewhere", west=100.0, south=30.0, east=100.5, north=30.5, boundary=None)
    settings = load_settings(data_dir=str(demo_dir), region=other.model_dump())
    assert settings.region == other  # not the recorded box under another name


def test_a_damaged_record_is_named(clean_env, tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / DATA_DIR_RECORD).write_text("max_epoch = 3\n")
    with pytest.raises(ConfigError, match=rf"{DATA_DIR_RECORD}: unknown setting 'max_epoch' \(did you mean max_epochs"):
        load_settings(data_dir=str(data))
    (data / DATA_DIR_RECORD).write_text('data_dir = "/elsewhere"\n')
    with pytest.raises(ConfigError, match="cannot name another data_dir"):
        load_settings(data_dir=str(data))


def test_the_record_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    import os

    data = tmp_path / "d"
    write_data_dir_record(data, {"source": "demo"}, "a test")
    good = (data / DATA_DIR_RECORD).read_bytes()

    def full_disk(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_data_dir_record(data, {"source": "local", "local_dir": "/x"}, "a test")
    assert (data / DATA_DIR_RECORD).read_bytes() == good
    assert sorted(p.name for p in data.iterdir()) == [DATA_DIR_RECORD]  # no temp file left


def test_a_new_demo_world_drops_the_old_record(demo_dir):
    (demo_dir / "demo").mkdir()
    (demo_dir / "demo" / "world.json").write_text("{}")
    clear_previous_demo(load_settings(data_dir=str(demo_dir), region=Region().model_dump()))
    assert not (demo_dir / DATA_DIR_RECORD).exists()


def test_the_full_demo_passes_its_own_region(tmp_path):
    # Without it, a demo over the whole province would take the small demo's recorded box.
    assert demo_overrides(DemoOptions(data_dir=tmp_path, small=False))["region"] == Region().model_dump()


def test_the_stack_shows_and_passes_on_the_recorded_region(demo_dir):
    cfg = StackConfig.from_env({"XCO2_DATA_DIR": str(demo_dir)}, state_dir=demo_dir.parent / "state")
    assert "XCO2_SOURCE" not in cfg.settings_env and not any(k.startswith("XCO2_REGION") for k in cfg.settings_env)
    assert (cfg.region, cfg.source) == (SMALL_REGION.name, "demo")


def test_commands_before_up_record_their_runs_in_the_stacks_database(tmp_path):
    state = tmp_path / "state"
    env = {"XCO2_STACK_DIR": str(state)}
    expected = f"sqlite+aiosqlite:///{state / 'prefect' / 'prefect.db'}"
    assert command_prefect_database(env) == expected and (state / "prefect").is_dir()
    (state / "stack.json").write_text(json.dumps({"prefect_database": expected, "stopped": False}))
    assert command_prefect_database(env) is None  # a running stack's server owns the file
    (state / "stack.json").write_text(json.dumps({"prefect_database": expected, "stopped": True}))
    assert command_prefect_database(env) == expected
    (state / "stack.json").write_text(json.dumps({"prefect_database": "postgresql+asyncpg://h/db", "stopped": True}))
    assert command_prefect_database(env) is None
    assert command_prefect_database({**env, "PREFECT_API_DATABASE_CONNECTION_URL": "sqlite+aiosqlite:///x.db"}) is None
