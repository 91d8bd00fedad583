"""A day mapped: the network through ONNX Runtime (`inference.py`), the daily-anomaly field added
(`daily_anomaly.py`), the single offset of older champions (`anchoring.py`).
"""
