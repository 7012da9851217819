"""Data: records, real on-disk formats, the embedded toy world, torch datasets."""
