"""Cleo's terminal commands (`cleo chat`, `cleo memory ...`, `cleo import/export`), without Qt."""
