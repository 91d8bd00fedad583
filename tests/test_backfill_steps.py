"""The backfill's choices (tasks/steps/backfill.py), without Prefect."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from tasks.settings import load_settings
from tasks.steps import backfill as steps


def test_window_days_spans_the_window():
    assert steps.window_days("2020-06-29", "2020-07-01") == [date(2020, 6, 29), date(2020, 6, 30), date(2020, 7, 1)]
    assert steps.window_days("2020-06-01", "2020-06-01") == [date(2020, 6, 1)]
    with pytest.raises(ValueError, match="after end"):
        steps.window_days("2020-06-02", "2020-06-01")


def test_absolute_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = steps.absolute(load_settings(data_dir="rel"))
    assert settings.data_dir == tmp_path / "rel" and settings.data_dir.is_absolute()
    assert settings.archive_root.is_absolute()


def test_stale_candidates_and_inputs():
    d1, d2, d3 = date(2020, 6, 1), date(2020, 6, 2), date(2020, 6, 3)
    assert steps.stale_candidates([d3, d1], [d1, d2]) == [d1, d2, d3]
    todo, skipped = steps.split_by_inputs([d1, d2, d3], lambda d: d != d2)
    assert todo == [d1, d3] and skipped == ["2020-06-02"]


def test_artifacts_and_failure_message():
    window = [date(2020, 6, 1), date(2020, 6, 2)]
    rows = [{"day": "2020-06-01", "path": "p", "mean_ppm": 410.0, "model_version": "2", "cells": 5}]
    arts = steps.run_artifacts(window, [], [], rows)
    assert [a.key for a in arts] == [steps.DAYS_KEY]
    assert arts[0].table == [{"day": "2020-06-01", "path": "p", "mean_ppm": 410.0, "model_version": "2"}]
    assert "2020-06-01..2020-06-02" in arts[0].description
    arts = steps.run_artifacts(window, [{"s": 1}], [{"r": 1}], [])
    assert [a.key for a in arts] == ["backfill-state-check", "backfill-archive-repairs", steps.DAYS_KEY]
    assert arts[-1].table == [{"day": "none"}]
    assert steps.failure_message({"2020-06-02": "x", "2020-06-01": "y"}, 5) == (
        "backfill failed for 2 of 5 days: 2020-06-01: y; 2020-06-02: x")
    assert steps.with_model([{"day": "d"}], "m", 3) == [{"day": "d", "model_name": "m", "model_version": "3"}]


def test_workers_get_absolute_data_and_archive_paths(clean_env, tmp_path):
    # A worker may run in another working directory: relative paths would point elsewhere there.
    settings = load_settings(data_dir="xco2-data")
    out = steps.absolute(settings)
    assert out.data_dir == tmp_path / "xco2-data" and out.archive_root == tmp_path / "xco2-data" / "archive"
    assert out.model_dump(exclude={"data_dir", "archive_dir"}) == settings.model_dump(exclude={"data_dir", "archive_dir"})
    elsewhere = steps.absolute(load_settings(data_dir="xco2-data", archive_dir="../published"))
    assert elsewhere.archive_root == tmp_path.parent / "published"
    assert settings.data_dir == Path("xco2-data")  # the settings given are left as they were
