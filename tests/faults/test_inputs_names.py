"""Issue 10, case 5 (and clock skew): one odd file name never stops a whole product.

Before: one file in the source directory whose name matched a product's pattern but carried an
impossible date stopped the product (`oco2: cannot list granules: ValueError: unconverted data
remains: 45`): no OCO-2 granule of any day was pulled. Now such a name, and a granule dated in
the future or before the mission flew, is skipped with a WARNING naming it; the rest is pulled.
"""

from __future__ import annotations

import logging
import shutil
from datetime import date, datetime, timedelta, timezone

import pytest

from demo_world import write_oco_lite
from demo_world.fixtures import tiny_soundings
from tasks.settings import load_settings
from tasks.sources import pull, raw_granules
from tasks.sources.products import PRODUCTS
from tasks.sources.remote import DirectoryRemote

DAY = date(2020, 6, 1)


@pytest.fixture
def source(tmp_path):
    root = tmp_path / "source"
    good = write_oco_lite(root / "oco2", tiny_soundings("oco2", DAY), mission="oco2", day=DAY)
    tomorrow = datetime.now(timezone.utc).date() + timedelta(days=30)
    odd = {
        # month 13: strptime reads 20-1-3 and finds "45" left over, the error of the report
        "month 13": "oco2_LtCO2_201345_B11100Ar_200701000000s.nc4",
        "day 45": "oco2_LtCO2_200645_B11100Ar_200701000000s.nc4",
        "future": f"oco2_LtCO2_{tomorrow:%y%m%d}_B11100Ar_200701000000s.nc4",
        "before launch": "oco2_LtCO2_130601_B11100Ar_200701000000s.nc4",
    }
    for name in odd.values():
        shutil.copyfile(good, root / "oco2" / name)
    return root, good, odd


def test_the_reported_name_matches_the_pattern_but_its_date_cannot_parse():
    spec = PRODUCTS["oco2"]
    name = "oco2_LtCO2_201345_B11100Ar_200701000000s.nc4"
    with pytest.raises(ValueError, match="unconverted data remains: 45"):
        datetime.strptime(spec.pattern.search(name).group(1), spec.day_format)
    problem = spec.name_problem(name)
    assert problem and "impossible" in problem and "201345" in problem
    assert spec.day(name) is None and not spec.matches(name)
    assert spec.day("oco2_LtCO2_200601_B11100Ar_200701000000s.nc4") == DAY


def test_odd_names_are_skipped_with_a_warning_naming_them(source, caplog):
    root, good, odd = source
    with caplog.at_level(logging.WARNING, logger="tasks.sources.remote"):
        listed = DirectoryRemote(root).list("oco2", None, None)
    assert [g.name for g in listed] == [good.name]
    warned = "\n".join(r.getMessage() for r in caplog.records)
    for what in ("month 13", "day 45", "future", "before launch"):
        assert odd[what] in warned
    assert "in the future" in warned and "before oco2's first day" in warned


def test_the_product_is_pulled_despite_odd_names(source, tmp_path, caplog):
    root, good, _ = source
    settings = load_settings(data_dir=str(tmp_path / "data"), source="local", local_dir=str(root))
    with caplog.at_level(logging.WARNING):
        report = pull(settings, products=("oco2",))
    assert not report.failed and report.fetched["oco2"] == [good.name]
    assert set(raw_granules(settings, "oco2")) == {DAY}


def test_a_stray_name_in_the_raw_cache_is_ignored(source, tmp_path):
    root, good, odd = source
    settings = load_settings(data_dir=str(tmp_path / "data"), source="local", local_dir=str(root))
    pull(settings, products=("oco2",))
    shutil.copyfile(good, settings.raw_dir / "oco2" / odd["day 45"])
    assert {d: [p.name for p in ps] for d, ps in raw_granules(settings, "oco2").items()} == {DAY: [good.name]}


def test_every_product_dates_its_names_within_its_life():
    today = date(2026, 1, 1)
    for product, name, ok in [
        ("gosat", "20090101-C3S-L2_GHG-GHG_PRODUCTS-TANSO-GOSAT-OCFP-DAILY-v7.3.nc", False),
        ("gosat", "20090601-C3S-L2_GHG-GHG_PRODUCTS-TANSO-GOSAT-OCFP-DAILY-v7.3.nc", True),
        ("oco3", "oco3_LtCO2_190701_B10400Br_200701000000s.nc4", False),
        ("oco3", "oco3_LtCO2_200601_B10400Br_200701000000s.nc4", True),
        ("era5", "era5_single_levels_19391231.nc", False),
        ("era5", "era5_single_levels_20260102.nc", True),  # tomorrow: one day of slack for time zones
        ("era5", "era5_single_levels_20260103.nc", False),
        ("era5", "era5_single_levels_20261340.nc", False),
    ]:
        assert (PRODUCTS[product].name_problem(name, today=today) is None) == ok, name
    assert PRODUCTS["static"].name_problem("elevation.tif") is None
