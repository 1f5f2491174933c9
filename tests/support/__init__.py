"""Fixtures shared by the test suites, loaded as pytest plugins by tests/conftest.py."""
