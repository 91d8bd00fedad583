import pytest

from flows.demo import DemoDataDirError, _clear_previous_demo
from tasks.settings import load_settings


def test_a_new_world_clears_what_the_old_one_derived(tmp_path):
    data = tmp_path / "data"
    for sub in ("raw/oco2", "regions/sichuan", "archive/sichuan", "demo"):
        (data / sub).mkdir(parents=True)
    (data / "mlflow.db").write_text("db")
    (data / "demo" / "world.json").write_text("{}")
    _clear_previous_demo(load_settings(data_dir=str(data)))
    assert not (data / "raw").exists() and not (data / "regions").exists() and not (data / "mlflow.db").exists()
    assert (data / "demo" / "world.json").exists()  # the generator replaces its own files


def test_refuses_a_data_dir_the_demo_did_not_make(tmp_path):
    data = tmp_path / "real"
    (data / "raw" / "oco2").mkdir(parents=True)
    with pytest.raises(DemoDataDirError, match="--data-dir"):
        _clear_previous_demo(load_settings(data_dir=str(data)))
    assert (data / "raw" / "oco2").is_dir()


def test_the_holdouts_never_steer_training(tmp_path):
    import numpy as np

    from tasks.steps.retrain import split_samples
    from models.validation import spatial_block_ids

    import pandas as pd

    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(30, 32, 5000), rng.uniform(103, 106, 5000)
    days = (pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 30, 5000), unit="D")).date
    df = pd.DataFrame({"latitude": lat, "longitude": lon, "day": days})
    settings = load_settings(data_dir=str(tmp_path), max_training_samples=500, max_validation_samples=200)
    split = split_samples(settings, df)
    parts = [set(split.fit), set(split.early_stopping), set(split.random), set(split.spatial), set(split.whole_days)]
    assert [len(p) for p in parts[:3]] == [500, 200, 200] and split.spatial_is_blocks
    assert all(not (a & b) for i, a in enumerate(parts) for b in parts[i + 1:])
    blocks = spatial_block_ids(lat, lon, settings.promotion_block_km)
    trained_on = np.concatenate([split.fit, split.early_stopping])
    assert not (set(blocks[split.spatial]) & set(blocks[trained_on]))  # whole blocks held out from training
    assert not (set(df["day"].iloc[split.whole_days]) & set(df["day"].iloc[trained_on]))  # and whole days
    again = split_samples(settings, df)
    assert np.array_equal(split.spatial, again.spatial) and np.array_equal(split.fit, again.fit)


def test_the_small_demo_region_crosses_sichuans_border():
    """`make demo`'s region: Sichuan cells (mapped) and Chongqing cells (nodata) in one small box."""
    from flows.demo import SMALL_REGION
    from tasks.gridding.geometry import Grid
    from tasks.regions.boundary import SHIPPED_BOUNDARIES, region_mask

    assert SMALL_REGION.boundary == str(SHIPPED_BOUNDARIES["sichuan"])
    inside = region_mask(SMALL_REGION, Grid.for_region(SMALL_REGION, 0.01))
    assert inside.shape == (50, 50) and 0.3 < inside.mean() < 0.9


def test_make_demo_archives_a_week_on_the_small_region():
    import re
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    args = re.search(r"^DEMO_ARGS\s*\?=(.*)$", makefile, re.M).group(1).split()
    assert "--small" in args and int(args[args.index("--archive-days") + 1]) >= 7
