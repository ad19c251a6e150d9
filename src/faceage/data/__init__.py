"""Reading, validating, splitting, caching and batching face datasets."""
