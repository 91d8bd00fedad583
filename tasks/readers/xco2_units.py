"""Deciding the unit of stored XCO2 from its magnitude, not from the units attribute.

A real C3S GOSAT header says units "1e-9" while the values are ppm, so the attribute cannot be
trusted; values near 4e-4 are mol/mol. Anything else is a broken or foreign file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.io.quarantine import InputFileError

PPM_MEDIAN_RANGE = (250.0, 600.0)
MOL_PER_MOL_MEDIAN_RANGE = (2.5e-4, 6.0e-4)


def ppm_factor(xco2: np.ndarray, quality_flag: np.ndarray, path: Path) -> tuple[float, str]:
    """(factor turning stored values into ppm, unit name) judged on the median.

    The median is taken over good-flag soundings when there are any: flagged soundings may hold
    absurd values (0, 9999) that must not decide the unit of the whole file."""
    finite = np.isfinite(xco2)
    good = finite & (quality_flag == 0)
    sample = xco2[good] if good.any() else xco2[finite]
    if sample.size == 0:
        return 1.0, "unknown (no values)"
    median = float(np.median(sample))
    if PPM_MEDIAN_RANGE[0] <= median <= PPM_MEDIAN_RANGE[1]:
        return 1.0, "ppm"
    if MOL_PER_MOL_MEDIAN_RANGE[0] <= median <= MOL_PER_MOL_MEDIAN_RANGE[1]:
        return 1e6, "mol/mol"
    raise InputFileError(
        path, f"xco2 median {median:.6g} is neither ppm (~400) nor mol/mol (~4e-4): "
        "unknown unit or corrupt values")
