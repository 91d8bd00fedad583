"""The names the comparison settings accept are the models' and protocols' own."""

from __future__ import annotations

import pytest

from models.baselines import MODELS
from models.validation import PROTOCOLS
from tasks.settings import COMPARISON_MODELS, Settings


def test_comparison_models_are_the_baselines_models():
    assert COMPARISON_MODELS == tuple(MODELS)


def test_every_protocol_and_model_is_accepted_and_an_unknown_one_is_named():
    settings = Settings(comparison_protocols=list(PROTOCOLS), comparison_models=list(MODELS))
    assert settings.comparison_protocols == list(PROTOCOLS)
    with pytest.raises(ValueError, match="unknown protocols \\['leave_one_out'\\]"):
        Settings(comparison_protocols=["leave_one_out"])
    with pytest.raises(ValueError, match="unknown models \\['svm'\\]"):
        Settings(comparison_models=["svm"])
