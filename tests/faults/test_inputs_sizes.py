"""Issue 10, case 10: hostile sizes are refused from what a file declares, before reading.

Before: an ERA5 ZIP whose member inflates to 3 GB, and an 11 KB NetCDF declaring 2e9 soundings,
passed the pull check and ended `xco2 inspect` and every daily run with a MemoryError traceback.
Now both are InputFileErrors naming the file and the size: the pull quarantines them, `xco2
inspect` exits 2 with the message, and gridding quarantines one already in the raw cache.
The hostile files are built cheaply: the bomb's deflate stream repeats one flushed block of
zeros, the NetCDF files declare huge dimensions but hold (almost) no data.
"""

from __future__ import annotations

import struct
import time
import zlib
from datetime import date
from pathlib import Path

import netCDF4
import numpy as np
import pytest

from tasks.samples import ingest
from demo_world import write_oco_lite
from demo_world.fixtures import tiny_soundings
from tasks.gridding.geometry import Grid
from tasks.io.quarantine import InputFileError
from tasks.readers import detect_format, inspect_file, read_era5, read_soundings
from tasks.readers.oco_lite import read_oco_lite
from tasks.settings import load_settings
from tasks.sources import pull

DAY = date(2020, 6, 1)
GRID = Grid(west=103.8, south=30.4, east=104.3, north=30.9, step=0.01)
ERA5_NAME = "era5_single_levels_20200601.nc"
LITE_NAME = "oco2_LtCO2_200601_B11100Ar_200701000000s.nc4"


def zip_bomb(path: Path, member: str, inflated_bytes: int) -> Path:
    """A real ZIP whose one deflated member inflates to `inflated_bytes` zeros (a multiple of
    1 MiB), written in well under a second: after a full flush, each MiB of zeros deflates to the
    same bytes, so the stream is one block repeated."""
    block = bytes(1 << 20)
    n = inflated_bytes // len(block)
    assert n * len(block) == inflated_bytes
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflate.compress(block)
    deflate.flush(zlib.Z_FULL_FLUSH)
    repeated = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    assert deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH) == repeated  # a fixed point
    start = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = start.compress(block) + start.flush(zlib.Z_FULL_FLUSH)
    data = first + repeated * (n - 1) + start.flush()
    crc = 0
    for _ in range(n):
        crc = zlib.crc32(block, crc)
    name = member.encode()
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(data), inflated_bytes, len(name), 0)
    central = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(data), inflated_bytes,
                          len(name), 0, 0, 0, 0, 0, 0)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central) + len(name), len(local) + len(name) + len(data),
                      0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(local + name + data + central + name + end)
    return path


def lite_declaring(path: Path, soundings: int) -> Path:
    """An OCO-2 Lite layout whose sounding dimension is `soundings` long, with no data written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with netCDF4.Dataset(path, "w") as ds:
        ds.setncattr("InstrumentShortName", "OCO-2")  # the pull checks a temp name that says nothing
        ds.createDimension("sounding_id", soundings)
        ds.createDimension("vertices", 4)
        chunk = (1 << 16,)
        ds.createVariable("sounding_id", "i8", ("sounding_id",), chunksizes=chunk)
        for name in ("latitude", "longitude", "time", "xco2", "xco2_uncertainty"):
            ds.createVariable(name, "f4", ("sounding_id",), chunksizes=chunk, fill_value=-999999.0)
        ds.createVariable("xco2_quality_flag", "i1", ("sounding_id",), chunksizes=chunk)
        for name in ("vertex_latitude", "vertex_longitude"):
            ds.createVariable(name, "f4", ("sounding_id", "vertices"), chunksizes=(1 << 14, 4))
        ds.createGroup("Sounding").createVariable("footprint", "i1", ("sounding_id",), chunksizes=chunk)
    return path


def era5_declaring(path: Path, steps: int) -> Path:
    """A new-CDS ERA5 layout whose time axis is `steps` long (one step written, at the end)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("valid_time", None)
        ds.createDimension("latitude", 5)
        ds.createDimension("longitude", 5)
        t = ds.createVariable("valid_time", "i8", ("valid_time",), chunksizes=(1024,))
        t.units = "seconds since 1970-01-01"
        ds.createVariable("latitude", "f8", ("latitude",))[:] = np.arange(5) * 0.25 + 30
        ds.createVariable("longitude", "f8", ("longitude",))[:] = np.arange(5) * 0.25 + 104
        for name in ("t2m", "sp"):
            ds.createVariable(name, "f4", ("valid_time", "latitude", "longitude"), chunksizes=(24, 5, 5))
        t[steps - 1] = 1_590_969_600
    return path


def test_a_zip_bomb_is_refused_unread_naming_file_and_size(tmp_path):
    path = zip_bomb(tmp_path / ERA5_NAME, "data_stream-oper_stepType-instant.nc", 3 * 1000 << 20)
    assert path.stat().st_size < 4_000_000
    started = time.perf_counter()
    for call in (detect_format, inspect_file, read_era5):
        with pytest.raises(InputFileError) as err:
            call(path)
        assert err.value.path == path
        assert "inflates to 3 145 728 000 bytes" in err.value.problem and "refused unread" in err.value.problem
    # Inflating 3 GB (testzip, or the read itself) takes tens of seconds; the refusal does not.
    assert time.perf_counter() - started < 10


def test_a_zip_bomb_under_the_size_limit_is_refused_by_its_ratio(tmp_path):
    path = zip_bomb(tmp_path / ERA5_NAME, "data_stream-oper_stepType-instant.nc", 200 << 20)
    with pytest.raises(InputFileError, match=r"inflates \d+-fold .* a ZIP bomb"):
        detect_format(path)


def test_a_netcdf_declaring_two_billion_soundings_is_refused_unread(tmp_path, capsys):
    from flows.cli import main

    path = lite_declaring(tmp_path / LITE_NAME, 2_000_000_000)
    assert path.stat().st_size < 100_000
    for call in (detect_format, read_soundings, inspect_file):
        with pytest.raises(InputFileError, match="declares 2 000 000 000 soundings") as err:
            call(path)
        assert err.value.path == path
    # A reader called directly checks each variable's declared size before allocating it.
    with pytest.raises(InputFileError, match="variable 'latitude' declares 2 000 000 000 values"):
        read_oco_lite(path, "oco2")
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert LITE_NAME in err and "2 000 000 000 soundings" in err


def test_an_era5_file_declaring_a_million_hours_is_refused_unread(tmp_path):
    path = era5_declaring(tmp_path / ERA5_NAME, 1_000_000)
    with pytest.raises(InputFileError, match="declares 1 000 000 time steps"):
        detect_format(path)


def test_the_pull_quarantines_hostile_files_and_pulls_the_rest(tmp_path):
    source = tmp_path / "source"
    good = write_oco_lite(source / "oco2", tiny_soundings("oco2", DAY), mission="oco2", day=DAY)
    huge = lite_declaring(source / "oco2" / "oco2_LtCO2_200602_B11100Ar_200702000000s.nc4", 2_000_000_000)
    zip_bomb(source / "era5" / ERA5_NAME, "data_stream-oper_stepType-instant.nc", 3 * 1000 << 20)
    settings = load_settings(data_dir=str(tmp_path / "data"), source="local", local_dir=str(source))
    report = pull(settings, products=("oco2", "era5"))
    assert report.fetched == {"oco2": [good.name], "era5": []} and not report.failed
    problems = {q["file"]: q["problem"] for q in report.quarantined}
    assert set(problems) == {huge.name, ERA5_NAME}
    assert "2 000 000 000 soundings" in problems[huge.name] and "3 145 728 000 bytes" in problems[ERA5_NAME]
    assert list(settings.quarantine_dir.glob(f"*_{huge.name}.json"))
    assert not (settings.raw_dir / "oco2" / huge.name).exists()


def test_gridding_quarantines_a_hostile_granule_already_in_the_raw_cache(tmp_path):
    good = write_oco_lite(tmp_path / "raw", tiny_soundings("oco2", DAY), mission="oco2", day=DAY)
    huge = lite_declaring(tmp_path / "raw" / "oco2_LtCO2_200601_B11100Ar_200702000000s.nc4", 2_000_000_000)
    result = ingest.grid_day(DAY, {"oco2": [good, huge], "oco3": [], "gosat": []}, GRID, tmp_path / "region",
                             tmp_path / "quarantine")
    assert [q["file"] for q in result.quarantined] == [huge.name]
    assert result.soundings["oco2"] == 40
