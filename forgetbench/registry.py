"""Plugin discovery (entry-point group ``forgetbench``) and the method/task registry."""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass, field
from functools import partial

import pluggy

from forgetbench import hookspecs
from forgetbench.api import Method, Task
from forgetbench.errors import ForgetbenchError, did_you_mean

ENTRY_POINT_GROUP = "forgetbench"
DISABLE_ENV = "FORGETBENCH_DISABLE_PLUGINS"
DISCOVERY_HOOKS = ("forgetbench_register_methods", "forgetbench_register_tasks")


@dataclass(frozen=True)
class Entry:
    """A registered class and the distribution (or plugin name) that provides it."""

    name: str
    cls: type
    provider: str


@dataclass
class Registry:
    """The core's table of methods and tasks. Duplicates are errors, lookups suggest names."""

    methods: dict[str, Entry] = field(default_factory=dict)
    tasks: dict[str, Entry] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add_method(self, cls: type, provider: str) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Method)) or not cls.name:
            raise ForgetbenchError(f"{provider}: register_methods needs a named Method subclass")
        self._add(self.methods, cls.name, cls, provider, "method")

    def add_task(self, cls: type, provider: str) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise ForgetbenchError(f"{provider}: register_tasks needs a Task subclass")
        self._add(self.tasks, cls.metadata.name, cls, provider, "task")

    @staticmethod
    def _add(table: dict[str, Entry], name: str, cls: type, provider: str, kind: str) -> None:
        if name in table:
            raise ForgetbenchError(
                f"duplicate {kind} {name!r}: provided by {table[name].provider} and by {provider}"
            )
        table[name] = Entry(name, cls, provider)

    def method(self, name: str) -> Entry:
        if name not in self.methods:
            raise ForgetbenchError(f"unknown method {name!r}" + did_you_mean(name, self.methods))
        return self.methods[name]

    def task(self, name: str) -> Entry:
        if name not in self.tasks:
            raise ForgetbenchError(f"unknown task {name!r}" + did_you_mean(name, self.tasks))
        return self.tasks[name]


def _disabled() -> set[str]:
    return {name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()}


def plugin_manager() -> pluggy.PluginManager:
    """A plugin manager with forgetbench's hookspecs and nothing registered."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    return manager


def load_entry_points(manager: pluggy.PluginManager) -> tuple[dict[str, str], list[str]]:
    """Import and register every ``forgetbench`` entry point not disabled.

    Returns ({plugin name: distribution}, problems). A plugin that fails to import is reported
    with its distribution and skipped; the others keep working. pluggy would silently skip a
    second entry point with a used name, so duplicates are detected here.
    """
    providers: dict[str, str] = {}
    problems: list[str] = []
    disabled = _disabled()
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = entry_point.dist.name if entry_point.dist else "unknown distribution"
        if entry_point.name in disabled:
            continue
        if entry_point.name in providers:
            problems.append(
                f"duplicate plugin name {entry_point.name!r}: {providers[entry_point.name]} and"
                f" {dist} (the second was not loaded)"
            )
            continue
        try:
            module = entry_point.load()
            manager.register(module, name=entry_point.name)
        except Exception as error:  # a broken third-party plugin must not break the others
            problems.append(f"plugin {entry_point.name!r} from {dist} failed to load: {error}")
            continue
        providers[entry_point.name] = dist
    return providers, problems


def build_registry(manager: pluggy.PluginManager, providers: dict[str, str]) -> Registry:
    """Call the discovery hooks of every registered plugin and fill a Registry."""
    registry = Registry()
    for hook_name, add in (
        ("forgetbench_register_methods", registry.add_method),
        ("forgetbench_register_tasks", registry.add_task),
    ):
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            provider = providers.get(impl.plugin_name, impl.plugin_name)
            try:
                impl.function(register=partial(add, provider=provider))
            except ForgetbenchError:
                raise
            except Exception as error:
                registry.problems.append(
                    f"plugin {impl.plugin_name!r} from {provider} raised: {error}"
                )
    return registry


_cached: Registry | None = None


def get_registry(reload: bool = False) -> Registry:
    """The process-wide registry of installed methods and tasks (loaded once)."""
    global _cached
    if _cached is None or reload:
        manager = plugin_manager()
        providers, problems = load_entry_points(manager)
        manager.check_pending()
        registry = build_registry(manager, providers)
        registry.problems[:0] = problems
        _cached = registry
    return _cached


def run_plugin_manager(methods: list[Method]) -> pluggy.PluginManager:
    """A plugin manager for one run holding the active method instances.

    Methods are registered in reverse so that hooks run in the order the user gave
    (pluggy calls the last registered first). Two methods implementing one firstresult hook
    are a conflict: the second would be silently ignored, so it is an error.
    """
    manager = plugin_manager()
    for method in reversed(methods):
        manager.register(method, name=f"method:{method.name}")
    manager.check_pending()
    for name in dir(manager.hook):
        if not name.startswith("forgetbench_"):
            continue
        caller = getattr(manager.hook, name)
        if caller.spec and caller.spec.opts.get("firstresult"):
            claimants = [
                impl.plugin_name.removeprefix("method:") for impl in caller.get_hookimpls()
            ]
            if len(claimants) > 1:
                raise ForgetbenchError(
                    f"methods {' and '.join(sorted(claimants))} both implement {name}:"
                    " they cannot be stacked"
                )
    return manager
