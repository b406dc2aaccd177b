"""The release managers' command line, ``staffel``."""
