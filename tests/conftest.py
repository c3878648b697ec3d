"""Shared fixtures: every test gets its own cache dir and results database; the test suite's
plugin distribution, ``forgetbench-test-fixtures``, for the tests that ask for it."""

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from reliability_helpers import (
    FIXTURES_DIST,
    FIXTURES_MODULE,
    add_fixtures_distribution,
    plugins_on_path,
)

from forgetbench.registry import Registry, get_registry
from forgetbench.testing import registry_with

PG_URL_ENV = "FORGETBENCH_TEST_PG_URL"


def pytest_configure(config):
    """A cache of the session's own before any fixture runs: module-scoped fixtures run before
    the per-test ``isolated_cache``, and none may read or fill the user's cache."""
    config.forgetbench_cache = tempfile.mkdtemp(prefix="forgetbench-tests-cache-")
    os.environ["FORGETBENCH_CACHE"] = config.forgetbench_cache


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "forgetbench_cache", ""), ignore_errors=True)


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


@pytest.fixture(scope="session")
def fixtures_plugin_path(tmp_path_factory) -> Path:
    """A folder holding ``forgetbench-test-fixtures`` (the mock tasks ``tiny`` and ``tiny-qa``
    and the test methods of ``reliability_helpers``), for a subprocess's ``PYTHONPATH``
    (``reliability_helpers.cli_process``)."""
    return add_fixtures_distribution(tmp_path_factory.mktemp("plugins"))


@pytest.fixture
def fixtures_plugin(fixtures_plugin_path, monkeypatch) -> Iterator[Registry]:
    """``forgetbench-test-fixtures`` on ``sys.path`` for one test, and the real registry
    loaded again: the CLI in this process finds the plugin as an installed one. Afterwards
    the registry of the installed plugins is loaded back (``plugins_on_path``)."""
    with plugins_on_path(monkeypatch, fixtures_plugin_path, modules=[FIXTURES_MODULE]):
        registry = get_registry(reload=True)
        assert registry.task("tiny").provider == FIXTURES_DIST, registry.problems
        yield registry
    assert "tiny" not in get_registry().tasks  # the next test sees the installed plugins only


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search path is a fresh schema of its own, dropped afterwards.

    Needs ``$FORGETBENCH_TEST_PG_URL`` (``scripts/postgres.sh`` prints one). Without it the test
    is skipped, except under CI, where a missing server must fail the run rather than hide it.
    """
    base = os.environ.get(PG_URL_ENV)
    if not base:
        message = f"{PG_URL_ENV} is not set: start a server with scripts/postgres.sh"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    schema = f"test_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(base)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.engine.make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, db) -> str:
    """A fresh results database on each backend: a SQLite path, then a PostgreSQL URL."""
    if request.param == "sqlite":
        return db
    return request.getfixturevalue("pg_url")
