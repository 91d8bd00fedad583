"""Units of work: sources, readers, gridding, fusion, features, samples, inference, archive."""
