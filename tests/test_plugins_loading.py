"""Third-party plugins found through entry points: a broken one is reported and skipped, a
duplicate name is reported, and ``FORGETBENCH_DISABLE_PLUGINS`` skips one by name.

The distributions are built on disk for the test (a ``*.dist-info`` folder with
``entry_points.txt`` next to its module), so nothing depends on what happens to be installed.
"""

import sys
from collections.abc import Iterator

import pytest
from reliability_helpers import add_distribution, plugins_on_path

from forgetbench.registry import DISABLE_ENV, get_registry

GOOD_PLUGIN = """
from forgetbench.api import Method, hookimpl


class PluginTestMethod(Method):
    name = "plugin-test-method"
    description = "registered by a test distribution"


@hookimpl
def forgetbench_register_methods(register):
    register(PluginTestMethod)
"""

DUPLICATE_PLUGIN = GOOD_PLUGIN.replace("plugin-test-method", "plugin-test-duplicate")
BROKEN_PLUGIN = 'raise RuntimeError("boom at import")\n'
MODULES = ("fb_test_good", "fb_test_broken", "fb_test_duplicate")


@pytest.fixture
def test_distributions(tmp_path, monkeypatch) -> Iterator[None]:
    """A good, a broken and (later on sys.path) a duplicate-named plugin distribution."""
    later = tmp_path / "later"
    add_distribution(
        later, "fb-test-duplicate-dist", "fb-test-good", "fb_test_duplicate", DUPLICATE_PLUGIN
    )
    first = tmp_path / "first"
    add_distribution(first, "fb-test-good-dist", "fb-test-good", "fb_test_good", GOOD_PLUGIN)
    add_distribution(
        first, "fb-test-broken-dist", "fb-test-broken", "fb_test_broken", BROKEN_PLUGIN
    )
    with plugins_on_path(monkeypatch, first, later, modules=MODULES):  # first searched first
        yield


@pytest.mark.usefixtures("test_distributions")
def test_broken_plugin_is_reported_and_the_others_load():
    registry = get_registry(reload=True)
    assert registry.methods["plugin-test-method"].provider == "fb-test-good-dist"
    assert "finetune" in registry.methods  # the installed plugins still load
    broken = [p for p in registry.problems if "fb-test-broken" in p]
    assert broken == [
        "plugin 'fb-test-broken' from fb-test-broken-dist failed to load: RuntimeError: boom at"
        " import (fix it, or skip it with FORGETBENCH_DISABLE_PLUGINS=fb-test-broken)"
    ]


@pytest.mark.usefixtures("test_distributions")
def test_duplicate_entry_point_name_is_reported():
    registry = get_registry(reload=True)
    assert (
        "duplicate plugin name 'fb-test-good': fb-test-good-dist and fb-test-duplicate-dist"
        " (the second was not loaded)"
    ) in registry.problems
    assert "plugin-test-duplicate" not in registry.methods


@pytest.mark.usefixtures("test_distributions")
def test_disabled_plugins_are_skipped(monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, "fb-test-broken, fb-test-good")
    registry = get_registry(reload=True)
    assert not [p for p in registry.problems if "fb-test" in p]
    assert "plugin-test-method" not in registry.methods
    assert "plugin-test-duplicate" not in registry.methods
    assert "fb_test_broken" not in sys.modules


@pytest.mark.usefixtures("test_distributions")
def test_a_plugin_skipped_by_its_distribution_name_and_an_unknown_name_reported(monkeypatch):
    """The distribution's name (what ``forgetbench list`` shows) skips its plugins as the
    entry point's name does; a name that matches nothing is reported, not silently ignored."""
    monkeypatch.setenv(DISABLE_ENV, "fb-test-broken-dist,fb-test-good-dist,fb-no-such-plugin")
    registry = get_registry(reload=True)
    assert "plugin-test-method" not in registry.methods
    assert "fb_test_broken" not in sys.modules
    assert [p for p in registry.problems if "fb-" in p] == [
        f"{DISABLE_ENV}: no installed plugin or distribution is named 'fb-no-such-plugin'"
    ]


def test_a_plugin_cannot_take_a_builtin_name(tmp_path, monkeypatch):
    """A third-party ``finetune`` is reported and set aside; the builtin keeps working."""
    source = GOOD_PLUGIN.replace('"plugin-test-method"', '"finetune"')
    add_distribution(tmp_path, "fb-test-squatter", "fb-test-squatter", "fb_test_squat", source)
    with plugins_on_path(monkeypatch, tmp_path, modules=["fb_test_squat"]):
        registry = get_registry(reload=True)
        assert registry.method("finetune").provider == "forgetbench"
        [problem] = [p for p in registry.problems if "fb-test-squatter" in p]
        assert "'finetune' stays the builtin one" in problem
        assert f"{DISABLE_ENV}=fb-test-squatter" in problem


def test_registry_is_back_to_the_installed_plugins():
    registry = get_registry(reload=True)
    assert not [name for name in registry.methods if name.startswith("plugin-test")]
    assert not [p for p in registry.problems if "fb-test" in p]
