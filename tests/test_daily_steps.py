"""The daily update's choices (tasks/steps/daily.py), without Prefect: its window, the days it
grids and maps, the per-day rows, the ERA5-final merge and what it publishes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import pytest

from tasks.covariates.meteorology import Era5Readiness
from tasks.covariates.day import DayReadiness
from tasks.io.quarantine import InputFileError
from tasks.sources.pull import PullReport
from tasks.steps import daily as steps
from tasks.steps.artifacts import Artifact

D = date(2020, 6, 10)
log = logging.getLogger("test")


def test_window_defaults_to_the_lookback_ending_today():
    assert steps.window(3, None, None, today=D) == (date(2020, 6, 8), D)
    assert steps.window(3, None, "2020-06-05") == (date(2020, 6, 3), date(2020, 6, 5))
    assert steps.window(3, "2020-06-01", "2020-06-05") == (date(2020, 6, 1), date(2020, 6, 5))
    with pytest.raises(ValueError, match="after end"):
        steps.window(3, "2020-06-06", "2020-06-05")


def test_era5_final_window_looks_at_older_days():
    # aged = last - (after + 1) days; the window ends there and spans window_days.
    assert steps.era5_final_window(D, 60, 5) == (date(2020, 4, 6), date(2020, 4, 10))


def test_merge_final_era5_adds_files_and_prefixes_failures():
    pulled = PullReport(fetched={"era5": ["a"], "oco2": ["o"]}, replaced={}, failed={"gosat": "down"})
    final = PullReport(fetched={"era5": ["b"]}, replaced={"era5": ["b"]}, failed={"era5": "timeout"})
    merged = steps.merge_final_era5(pulled, final)
    assert merged is pulled
    assert pulled.fetched == {"era5": ["a", "b"], "oco2": ["o"]}
    assert pulled.replaced == {"era5": ["b"]}
    assert pulled.failed == {"gosat": "down", "era5 final: era5": "timeout"}


def test_a_replaced_era5_file_refreshes_its_day_and_the_day_before():
    assert steps.refreshed_days(["era5_single_levels_20200610.nc"]) == {D, date(2020, 6, 9)}
    assert steps.refreshed_days([]) == set()
    # A name with no ERA5 day in it refreshes nothing (it used to raise TypeError on None - timedelta).
    assert steps.refreshed_days(["era5_single_levels_notes.txt"]) == set()


def _files(*names: str) -> list[Path]:
    return [Path(n) for n in names]


def test_days_to_grid_new_unsampled_and_refreshed():
    granules = {
        "oco2": {date(2020, 6, 1): _files("old1"), date(2020, 6, 2): _files("new2"), date(2020, 6, 3): _files("old3"),
                 date(2020, 5, 1): _files("new_out_of_window")},
        "gosat": {date(2020, 6, 4): _files("old4")},
    }
    days = steps.days_to_grid(granules, new_files={"new2", "new_out_of_window"},
                              sampled={date(2020, 6, 1), date(2020, 6, 2), date(2020, 6, 3), date(2020, 6, 4)},
                              refreshed={date(2020, 6, 3), date(2020, 5, 1)}, first=date(2020, 6, 1), last=date(2020, 6, 5))
    # 6-02: a new granule; 6-03: refreshed meteorology; 5-01: refreshed, although outside the window
    # (its granule being new does not count there); 6-01 and 6-04: sampled, nothing new.
    assert days == [date(2020, 5, 1), date(2020, 6, 2), date(2020, 6, 3)]
    unsampled = steps.days_to_grid(granules, set(), sampled=set(), refreshed=set(), first=date(2020, 6, 1),
                                   last=date(2020, 6, 5))
    assert unsampled == [date(2020, 6, 1), date(2020, 6, 2), date(2020, 6, 3), date(2020, 6, 4)]


def test_granules_of_day_names_every_satellite():
    out = steps.granules_of_day({"oco2": {D: _files("a")}, "oco3": {}, "gosat": {}}, D)
    assert out == {"oco2": [Path("a")], "oco3": [], "gosat": []}


@dataclass
class _Gridded:
    day: date
    granules: dict = field(default_factory=lambda: {"oco2": 2})
    soundings: dict = field(default_factory=lambda: {"oco2": 40, "gosat": 3})
    quarantined: list = field(default_factory=lambda: [{"file": "x"}])


def _inputs(missing=(), reasons=(), ndvi=None, quarantined=()) -> DayReadiness:
    return DayReadiness(D, Era5Readiness(D, list(missing), list(quarantined), list(reasons)), ndvi)


def test_a_ready_day_is_sampled_and_its_row_says_so():
    row, q = steps.sample_ready_day(_Gridded(D), _inputs(), lambda d: 17, log)
    assert q == []
    assert row == {"day": "2020-06-10", "oco2_granules": 2, "oco3_granules": 0, "gosat_granules": 0,
                   "oco2_soundings": 40, "oco3_soundings": 0, "gosat_soundings": 3, "samples": 17, "era5": "yes",
                   "era5_problem": "", "ndvi": "yes", "ndvi_problem": None, "quarantined": 1}


def test_a_day_waiting_for_era5_or_ndvi_is_not_sampled():
    def never(_d):
        raise AssertionError("a waiting day must not be sampled")

    row, q = steps.sample_ready_day(_Gridded(D), _inputs(missing=["f"], reasons=["no file"], quarantined=[{"f": 1}]),
                                    never, log)
    assert (row["samples"], row["era5"], row["era5_problem"], q) == (0, "waiting", "no file", [{"f": 1}])
    row, _ = steps.sample_ready_day(_Gridded(D), _inputs(ndvi="composite quarantined"), never, log)
    assert (row["samples"], row["era5"], row["ndvi"], row["ndvi_problem"]) == (0, "yes", "waiting",
                                                                               "composite quarantined")


def test_a_bad_input_found_while_sampling_makes_the_day_wait():
    def bad(_d):
        raise InputFileError("e.nc", "truncated")

    row, _ = steps.sample_ready_day(_Gridded(D), _inputs(), bad, log)
    assert (row["samples"], row["era5"], row["era5_problem"]) == (0, "waiting", "e.nc: truncated")


def test_days_to_map_missing_or_recomputed_with_inputs():
    lookback = steps.archive_lookback(D, 4)
    assert lookback == [D, date(2020, 6, 9), date(2020, 6, 8), date(2020, 6, 7)]
    archived = {date(2020, 6, 9), date(2020, 6, 8), date(2020, 5, 1)}
    todo = steps.days_to_map(lookback, archived, recompute={date(2020, 6, 8), date(2020, 5, 1), date(2020, 5, 2)},
                             available=lambda d: d != date(2020, 6, 7))
    # 6-10 missing; 6-07 missing but without inputs; 6-08 and 5-01 archived and recomputed;
    # 5-02 to recompute but never archived; 6-09 archived and unchanged.
    assert todo == [date(2020, 5, 1), date(2020, 6, 8), D]


def test_days_whose_field_window_reaches_the_runs_window_are_checked_for_staleness():
    # A run over 6-01..6-10 (granules may arrive 10 days late) with a +-15-day field: every
    # archived day from 5-17 to 6-25 may have gained samples; 5-16 and 6-26 cannot have.
    lookback = steps.archive_lookback(D, 3)
    archived = {date(2020, 5, 1), date(2020, 5, 16), date(2020, 5, 17), date(2020, 6, 25), date(2020, 6, 26)}

    def field(d):
        return d - timedelta(days=15), d + timedelta(days=15)

    scan = steps.days_to_check_for_staleness(lookback, archived, date(2020, 6, 1), D, field)
    assert scan == [date(2020, 5, 17), date(2020, 6, 8), date(2020, 6, 9), D, date(2020, 6, 25)]
    # A map of the day alone (no field) is the concern of its own day only.
    alone = steps.days_to_check_for_staleness(lookback, archived | {date(2020, 6, 2)}, date(2020, 6, 1), D,
                                              lambda d: (d, d))
    assert alone == [date(2020, 6, 2), date(2020, 6, 8), date(2020, 6, 9), D]


@dataclass
class _Fit:
    fit_id: str = "f1"
    intercept: float = 0.5
    slope: float = 1.0
    n_collocations: int = 12
    method: str = "deming"

    def to_dict(self):
        return {"fit_id": self.fit_id}


@dataclass
class _Champion:
    name: str = "xco2"
    version: int = 3
    metrics: dict = field(default_factory=lambda: {"rmse": 1.23456})


def _rows():
    return [steps.day_row(_Gridded(D), 5, True, "", None),
            steps.day_row(_Gridded(date(2020, 6, 9)), 0, False, "no era5", None)]


def test_run_artifacts_of_a_run_without_champion():
    pulled = PullReport(fetched={"oco2": ["a", "b"]}, failed={"gosat": "down"})
    arts = steps.run_artifacts(date(2020, 6, 9), D, "box", Path("/nowhere"), pulled, _rows(), _Fit(), [{"q": 1}],
                               [], [], [], None, {})
    assert all(isinstance(a, Artifact) for a in arts)
    keys = [a.key for a in arts]
    assert keys == ["daily-days-processed", "daily-quarantined", "daily-source-failures", "daily-archive-days",
                    "daily-summary"]
    by = {a.key: a for a in arts}
    assert by["daily-source-failures"].table == [{"product": "gosat", "problem": "down"}]
    assert "waiting for a first champion" in by["daily-archive-days"].table[0]["why"]
    summary = by["daily-summary"].markdown
    assert "# Daily update 2020-06-09..2020-06-10 (box)" in summary
    assert "- new granules: 2 (oco2: 2)" in summary
    assert "- days sampled: 1 of 2 gridded" in summary
    assert "- days waiting for ERA5: 2020-06-09 (no era5)" in summary
    assert "- products that failed to pull: gosat" in summary
    assert "- quarantined inputs: 1" in summary


def test_run_artifacts_with_a_champion_and_failed_days():
    arts = steps.run_artifacts(D, D, "box", Path("/nowhere"), PullReport(), [], _Fit(), [], [{"s": 1}], [{"r": 1}],
                               [], _Champion(), {"2020-06-10": "disk full"})
    by = {a.key: a for a in arts}
    assert by["daily-days-processed"].table == [{"day": "none new"}]
    assert by["daily-archive-failures"].table == [{"day": "2020-06-10", "problem": "disk full"}]
    assert by["daily-model"].table == [{"metric": "model", "value": "xco2 v3 (@champion)"},
                                       {"metric": "rmse", "value": 1.2346}]
    assert {"daily-state-check", "daily-archive-repairs"} <= set(by)
    assert "nothing to map" in by["daily-archive-days"].table[0]["why"]
    assert "- archive days that could not be written: 2020-06-10" in by["daily-summary"].markdown
    assert arts[-1].key == "daily-summary"


def test_failure_artifacts():
    arts = steps.nothing_pulled_artifacts(D, D, "box", {"oco2": "401"}, "every source failed")
    assert [a.key for a in arts] == ["daily-source-failures", "daily-summary"]
    assert "FAILED" in arts[1].markdown and "every source failed" in arts[1].markdown
    arts = steps.covariates_failed_artifacts(D, D, "box", 3, [], ValueError("bad dem"))
    assert [a.key for a in arts] == ["daily-summary"] and "bad dem" in arts[0].markdown
    assert [a.key for a in steps.covariates_failed_artifacts(D, D, "box", 3, [{"f": 1}], ValueError("x"))] == [
        "daily-quarantined", "daily-summary"]


def test_an_artifact_is_a_table_or_a_page():
    with pytest.raises(ValueError):
        Artifact("k")
    with pytest.raises(ValueError):
        Artifact("k", table=[], markdown="x")


def test_run_result_and_archive_failure_message():
    result = steps.run_result(D, D, PullReport(fetched={"oco2": ["a"]}), [], [], [], [], [], {D}, _Fit())
    assert result["recomputed_days"] == ["2020-06-10"] and result["new_granules"] == 1
    assert result["gosat_fit"] == {"fit_id": "f1"}
    exc = steps.ArchiveDaysFailed({"2020-06-10": "disk full"})
    assert "1 archive days could not be written: 2020-06-10: disk full" in str(exc)
