"""Analyses of the archive and of the models: the regional report (`report/`: window, scan, tables,
figures, outputs, and the facade `build_report`), accuracy against a known truth (`accuracy.py`),
interval reliability (`reliability.py`), the real-value benchmark's split, baselines and scores
(`real_benchmark.py`) and its inputs and outputs (`real_benchmark_io.py`), and a training run's
figures (`training_figures.py`). The past-window check trains a model, so it is a step
(`tasks/steps/past_window.py`)."""
