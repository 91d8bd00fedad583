"""Analyses of the archive and of the models: the regional report (`report.py`), accuracy against a
known truth (`accuracy.py`), the past-window check (`past_window.py`) and the real-value benchmark's
inputs and outputs (`real_benchmark_io.py`)."""
