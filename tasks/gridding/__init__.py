"""The grid and the soundings on it: what values an input may hold (`plausibility.py`), grid geometry
(`geometry.py`), the soundings table and its screening (`soundings.py`), a day's soundings onto
cells (`cells.py`).
"""
