"""File helpers, below every other room of tasks/: every published file written atomically
(`atomic.py`), unreadable inputs quarantined (`quarantine.py`), a state file judged whole and the temp
files of dead writers (`integrity.py`), remembered file digests (`file_digests.py`), GeoTIFF writing
(`geotiff.py`), progress bars (`progress.py`). Nothing here imports another room of tasks/.
"""
