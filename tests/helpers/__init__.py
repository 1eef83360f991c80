"""Helpers shared by the tests: models, data, bad files, the window."""
