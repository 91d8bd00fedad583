"""The sample store (`store.py`: one Parquet file a day) and how a day's granules become samples
(`ingest.py`: grid, fuse, add covariates).
"""
