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


def test_the_holdout_never_steers_training(tmp_path):
    import numpy as np

    from flows.retrain import split_samples

    settings = load_settings(data_dir=str(tmp_path), max_training_samples=500, max_validation_samples=200)
    fit, stop, holdout = split_samples(settings, 5000)
    assert len(fit) == 500 and len(stop) == 200 and len(holdout) == 200
    assert not (set(fit) & set(stop)) and not (set(fit) & set(holdout)) and not (set(stop) & set(holdout))
    again = split_samples(settings, 5000)
    assert all(np.array_equal(a, b) for a, b in zip((fit, stop, holdout), again))
