"""The flows' steps as plain functions, one module per flow, tested without Prefect.

A flow in `flows/` reads as the business process and calls these (through the Prefect task
wrappers of `tasks/prefect_tasks.py` where a step is worth a task of its own); the choices a flow
makes (which days, what to merge, what to report) live here.
"""
