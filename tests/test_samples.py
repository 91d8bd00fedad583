from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.covariates.features import FEATURE_NAMES
from tasks.samples.store import SampleStoreError, day_file, read_samples, stored_days, write_day


def _frame(n, seed=0, source="oco2"):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "cell": np.arange(n, dtype=np.int64), "row": np.zeros(n, np.int32), "col": np.arange(n, dtype=np.int32),
        "xco2": rng.normal(413, 1, n), "xco2_uncertainty": np.full(n, 0.8), "source": [source] * n,
        "n_soundings": np.ones(n, np.int32), "weight": np.full(n, 1 / 3),
        "fit_id": ["0123456789ab" if source == "gosat" else ""] * n,
    })
    feats = pd.DataFrame(rng.normal(size=(n, len(FEATURE_NAMES))).astype(np.float32), columns=list(FEATURE_NAMES))
    return pd.concat([df, feats], axis=1)


def test_round_trip_and_partitioning(tmp_path):
    write_day(tmp_path, date(2020, 6, 1), _frame(5))
    write_day(tmp_path, date(2020, 6, 2), _frame(3, seed=1, source="gosat"))
    assert day_file(tmp_path, date(2020, 6, 1)).parent.name == "day=2020-06-01"
    assert stored_days(tmp_path) == [date(2020, 6, 1), date(2020, 6, 2)]
    df = read_samples(tmp_path)
    assert len(df) == 8 and set(df["source"]) == {"oco2", "gosat"}
    assert len(read_samples(tmp_path, start=date(2020, 6, 2))) == 3


def test_reingesting_a_day_replaces_it(tmp_path):
    write_day(tmp_path, date(2020, 6, 1), _frame(5))
    write_day(tmp_path, date(2020, 6, 1), _frame(2, seed=3))
    df = read_samples(tmp_path)
    assert len(df) == 2
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temp files left


def test_schema_checked_on_write(tmp_path):
    bad = _frame(3).drop(columns=["ndvi"])
    with pytest.raises(SampleStoreError, match="missing columns"):
        write_day(tmp_path, date(2020, 6, 1), bad)
    bad = _frame(3)
    bad.loc[1, "xco2"] = 9999.0
    with pytest.raises(SampleStoreError, match="outside"):
        write_day(tmp_path, date(2020, 6, 1), bad)
    bad = _frame(3, source="tanso")
    with pytest.raises(SampleStoreError, match="unknown sources"):
        write_day(tmp_path, date(2020, 6, 1), bad)
    assert stored_days(tmp_path) == []


def test_schema_and_feature_set_checked_on_read(tmp_path):
    path = write_day(tmp_path, date(2020, 6, 1), _frame(3))
    table = pq.read_table(path).replace_schema_metadata({b"feature_set_version": b"fs0-old"})
    pq.write_table(table, path)
    with pytest.raises(SampleStoreError, match="fs0-old"):
        read_samples(tmp_path)
    write_day(tmp_path, date(2020, 6, 1), _frame(3))
    table = pq.read_table(path)
    table = table.set_column(table.schema.get_field_index("xco2"), "xco2", pa.array(np.arange(3.0) + 400, pa.float32()))
    pq.write_table(table, path)
    with pytest.raises(SampleStoreError, match="schema differs"):
        read_samples(tmp_path)


def test_weights_and_fit_ids_round_trip_and_are_checked(tmp_path):
    write_day(tmp_path, date(2020, 6, 1), _frame(3, source="gosat"))
    df = read_samples(tmp_path)
    assert df["weight"].tolist() == [1 / 3] * 3 and set(df["fit_id"]) == {"0123456789ab"}
    bad = _frame(3)
    bad.loc[0, "weight"] = 0.0
    with pytest.raises(SampleStoreError, match="weight"):
        write_day(tmp_path, date(2020, 6, 2), bad)
    with pytest.raises(SampleStoreError, match="missing columns.*fit_id"):
        write_day(tmp_path, date(2020, 6, 2), _frame(3).drop(columns=["fit_id"]))


def test_a_file_of_the_previous_schema_is_named_with_the_way_to_recover(tmp_path):
    path = write_day(tmp_path, date(2020, 6, 1), _frame(3))
    table = pq.read_table(path)
    pq.write_table(table.drop(["weight", "fit_id"]), path)
    with pytest.raises(SampleStoreError, match=f"{path}: written by an earlier version.*re-fuses the day"):
        read_samples(tmp_path)
