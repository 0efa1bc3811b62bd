"""The package's version: one place, read by setup.py, `hybridir.__version__` and the artifacts'
manifests."""
VERSION = "0.1.0"
