"""Releases: the catalog of uploaded ECU images and the bundles made of them."""
