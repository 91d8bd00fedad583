"""Several satellites made one record: OCO-2 and OCO-3 merged, GOSAT mapped onto OCO by the stored fit
(`merge.py`).
"""
