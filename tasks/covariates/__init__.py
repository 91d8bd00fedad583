"""The model's inputs besides XCO2: the static layers gridded (`static.py`), the daily meteorology
(`meteorology.py`), the 46 features (`features.py`).
"""
