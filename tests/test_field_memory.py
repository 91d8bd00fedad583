"""The daily-anomaly field's maximum-likelihood fit finds the optimum with memory from day to day.

Regression case from the Sichuan demo (40 days, 60,000 training samples, docs/design.md "A third
Sichuan run"): 800 super-observations of the background's residuals on which the fit's first start
converges to a field with no memory (both time scales at their 0.25-day bound), a local optimum;
a start with a week-long part reaches a likelihood e^3.3 times higher. A field without memory
gives a day with no observations nothing but the background."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.residual_field import Superobs, fit_residual_field

FIXTURE = Path(__file__).parent / "data" / "field_memory_superobs.npz"


def _fixture() -> tuple[Superobs, float, float]:
    z = np.load(FIXTURE)
    obs = Superobs(*(z[c].astype(np.float64) for c in ("lon", "lat", "day", "residual", "weight")))
    return obs, float(z["lat0"]), float(z["clip"])


def test_the_fit_keeps_the_field_s_memory_from_day_to_day():
    obs, lat0, clip = _fixture()
    assert len(obs) == 800
    field = fit_residual_field(obs, lat0, seed=20200601, clip_ppm=clip)
    longest = max(field.local_time_days, field.regional_time_days)
    assert longest > 3.0, f"a field without memory: time scales {field.local_time_days}, {field.regional_time_days}"
    assert field.window_days > 3
    # Its day-level part stays (the regional one, independent from day to day, 0.3-0.8 ppm2 here).
    assert min(field.local_time_days, field.regional_time_days) <= 0.5
    assert 0.2 < field.local_variance + field.regional_variance < 2.0
