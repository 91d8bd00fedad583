"""Files and state: every published file written atomically (`atomic.py`), unreadable inputs
quarantined (`quarantine.py`), derived state checked at a run's start (`state_check.py`), GeoTIFF
writing (`geotiff.py`), progress bars (`progress.py`).
"""
