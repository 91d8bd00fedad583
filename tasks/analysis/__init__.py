"""Analyses of the archive and of the models: the regional report (`report.py`), accuracy against a
known truth (`accuracy.py`), interval reliability (`reliability.py`) and the real-value benchmark's
inputs and outputs (`real_benchmark_io.py`). The past-window check trains a model, so it is a step
(`tasks/steps/past_window.py`)."""
