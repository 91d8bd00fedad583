"""Issue 10, case 15: configuration mistakes stop the command with the setting, file or
directory named (and a did-you-mean for misspellings) as the last line, exit code 2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.settings import ConfigError, check_data_dir, check_environment, load_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("variable, suggestion", [
    ("XCO2_ARCHIVE_LOOKBACK_DAY", "XCO2_ARCHIVE_LOOKBACK_DAYS"),
    ("XCO2_REGION__WESTT", "XCO2_REGION__WEST"),
    ("XCO2_REGION_WEST", "XCO2_REGION__WEST"),
    ("xco2_data_dri", "XCO2_DATA_DIR"),
])
def test_misspelt_variable_is_an_error_with_did_you_mean(clean_env, variable, suggestion):
    clean_env.setenv(variable, "5")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert variable in str(caught.value) and f"did you mean {suggestion}?" in str(caught.value)


def test_variables_that_are_no_settings_but_are_used_are_allowed(clean_env, tmp_path):
    config = tmp_path / "site.toml"
    config.write_text("archive_lookback_days = 4\n[region]\nwest = 100.0\n")
    clean_env.setenv("XCO2_CONFIG", str(config))
    clean_env.setenv("XCO2_REPO", "/app")
    clean_env.setenv("XCO2_STACK_DIR", str(tmp_path / "stack"))
    clean_env.setenv("XCO2_REGION__NAME", "west_sichuan")
    clean_env.setenv("xco2_source", "demo")  # settings are read case-insensitively
    s = load_settings()
    assert (s.archive_lookback_days, s.region.west, s.region.name) == (4, 100.0, "west_sichuan")
    check_environment({"PATH": "/bin", "XCO2_STACK_PREFECT_PORT": "4300", "XCO2_GRID_STEP": "0.02"})


def test_unknown_toml_keys_are_named_with_the_file(clean_env, tmp_path):
    config = tmp_path / "site.toml"
    config.write_text("archive_lookback_day = 5\n\n[region]\nwestt = 100.0\n")
    clean_env.setenv("XCO2_CONFIG", str(config))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    text = str(caught.value)
    assert f"{config}: unknown setting 'archive_lookback_day' (did you mean archive_lookback_days?)" in text
    assert f"{config}: unknown setting 'region.westt' in [region] (did you mean west?)" in text


def test_malformed_toml_names_file_and_line(clean_env, tmp_path):
    config = tmp_path / "xco2.toml"  # the default file in the working directory
    config.write_text("grid_step = 0.01\nsource = demo\n")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(config.name) in str(caught.value) and "line 2" in str(caught.value)
    assert "not valid TOML" in str(caught.value)


def test_non_utf8_toml_names_file_and_line(clean_env, tmp_path):
    config = tmp_path / "latin1.toml"
    config.write_bytes("grid_step = 0.01\n[region]\nname = 'chengdu'\n# r\u00e9gion\n".encode("latin-1"))
    clean_env.setenv("XCO2_CONFIG", str(config))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(config) in str(caught.value) and "line 4" in str(caught.value) and "UTF-8" in str(caught.value)


def test_config_pointing_at_a_directory_says_so(clean_env, tmp_path):
    clean_env.setenv("XCO2_CONFIG", str(tmp_path))
    with pytest.raises(ConfigError, match="is a directory, not a TOML file"):
        load_settings()
    clean_env.setenv("XCO2_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings()


@pytest.mark.parametrize("variable", ["XCO2_DATA_DIR", "XCO2_ARCHIVE_DIR"])
def test_empty_directory_setting_is_an_error(clean_env, variable):
    clean_env.setenv(variable, "")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert variable in str(caught.value) and "must not be empty" in str(caught.value)


def test_data_dir_that_is_a_file_or_cannot_be_created(clean_env, tmp_path):
    afile = tmp_path / "data.txt"
    afile.write_text("not a directory")
    with pytest.raises(ConfigError, match=f"{afile} is not a directory"):
        check_data_dir(load_settings(data_dir=str(afile)))
    with pytest.raises(ConfigError, match="cannot be created"):
        check_data_dir(load_settings(data_dir=str(afile / "xco2-data")))
    fresh = tmp_path / "new" / "xco2-data"
    check_data_dir(load_settings(data_dir=str(fresh)))  # created, and nothing left in it
    assert fresh.is_dir() and list(fresh.iterdir()) == []


def test_cli_prints_the_error_last_and_exits_2(clean_env, capsys):
    from flows.cli import main

    clean_env.setenv("XCO2_ARCHIVE_LOOKBACK_DAY", "5")
    assert main(["config"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "XCO2_ARCHIVE_LOOKBACK_DAY" in last and "did you mean XCO2_ARCHIVE_LOOKBACK_DAYS?" in last


def test_read_only_data_dir_stops_daily_before_any_flow(tmp_path):
    """Run as an operator would: `xco2 daily` with a data dir it cannot write. Root may write
    anywhere (CAP_DAC_OVERRIDE), so as root the command runs without that capability (setpriv,
    util-linux)."""
    data = tmp_path / "xco2-data"
    data.mkdir()
    data.chmod(0o555)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("XCO2_")}
    env.update(XCO2_DATA_DIR=str(data), PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "flows.cli", "daily", "--end", "2020-06-01"]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "as root this test needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE"
        drop = "-dac_override,-dac_read_search"
        command = [setpriv, f"--inh-caps={drop}", f"--bounding-set={drop}", *command]
    try:
        proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    finally:
        data.chmod(0o755)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert str(data) in last and "not writable" in last, proc.stderr[-2000:]
    assert "NDVI" not in proc.stderr and "Traceback" not in proc.stderr
    assert list(data.iterdir()) == []
