"""The edge relay: caches signed metadata and blobs for a site, forwards vehicle RPCs upstream."""
