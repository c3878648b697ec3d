"""Shared fixtures: every test gets its own cache dir and results database."""

import pytest

from forgetbench.testing import registry_with


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """A private FORGETBENCH_CACHE and no FORGETBENCH_DB from the environment."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FORGETBENCH_CACHE", str(cache))
    monkeypatch.delenv("FORGETBENCH_DB", raising=False)
    monkeypatch.delenv("FORGETBENCH_DISABLE_PLUGINS", raising=False)
    return cache


@pytest.fixture
def db(tmp_path):
    """A fresh SQLite results database path."""
    return str(tmp_path / "results.db")


@pytest.fixture
def tiny_registry():
    """Installed methods and tasks plus the in-code ``tiny`` task."""
    return registry_with()
