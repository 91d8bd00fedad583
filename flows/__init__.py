"""Thin Prefect flows composing the tasks, and the `xco2` command line."""
