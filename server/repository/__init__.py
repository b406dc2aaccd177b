"""The TUF Image repository, the per-vehicle Uptane Director, and the blob store."""
