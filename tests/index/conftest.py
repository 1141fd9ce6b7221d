"""The index tests use the session fixtures `trained_shop` and `flat_bundle` of ``tests/conftest.py``."""
