"""Bundled example models (plain torch, seeded weights) used by `make demo` and the tests."""
