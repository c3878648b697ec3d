"""Plugin discovery (entry-point group ``forgetbench``) and the method/task registry.

A plugin author's mistake is one line naming the distribution and what to fix, and it never
breaks the other plugins: a module that raises at import, a misspelled hook name, a hookimpl
with an argument its hook does not pass, a ``Config`` that is not a dataclass, or a method or
task name that two distributions claim. The plugin (or the name) is set aside, ``forgetbench
list`` warns about it, and asking for it says why it is not available.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import os
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pluggy

from forgetbench import hookspecs
from forgetbench.api import Method, Task
from forgetbench.errors import ForgetbenchError, did_you_mean

ENTRY_POINT_GROUP = "forgetbench"
DISABLE_ENV = "FORGETBENCH_DISABLE_PLUGINS"
BUILTIN_PROVIDER = "forgetbench"  # the distribution of the builtin methods and tasks


class DuplicateName(ForgetbenchError):
    """Two plugins registered one method or task name."""


DISCOVERY_HOOKS = ("forgetbench_register_methods", "forgetbench_register_tasks")
# Every hook and the arguments it passes, from the hookspecs.
HOOK_ARGUMENTS: dict[str, tuple[str, ...]] = {
    name: tuple(inspect.signature(function).parameters)
    for name, function in vars(hookspecs).items()
    if name.startswith(f"{hookspecs.PROJECT}_") and callable(function)
}
IMPL_MARK = f"{hookspecs.PROJECT}_impl"  # the attribute pluggy's HookimplMarker sets


@dataclass(frozen=True)
class Entry:
    """A registered class and the distribution (or plugin name) that provides it."""

    name: str
    cls: type
    provider: str


@dataclass
class Registry:
    """The core's table of methods and tasks. Duplicates are errors, lookups suggest names.

    ``problems``: one line per plugin mistake found while loading (``forgetbench list`` shows
    them); ``unavailable``: method, task or plugin names set aside, with the reason, so that
    asking for one says why rather than "unknown".
    """

    methods: dict[str, Entry] = field(default_factory=dict)
    tasks: dict[str, Entry] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)

    def add_method(self, cls: type, provider: str) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Method)) or not cls.name:
            raise ForgetbenchError(
                f"{provider}: register_methods needs a Method subclass with a name, got {cls!r}"
            )
        check_class(cls, f"method {cls.name!r} from {provider}")
        self._add(self.methods, cls.name, cls, provider, "method")

    def add_task(self, cls: type, provider: str) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise ForgetbenchError(f"{provider}: register_tasks needs a Task subclass, got {cls!r}")
        check_class(cls, f"task {cls.metadata.name!r} from {provider}")
        self._add(self.tasks, cls.metadata.name, cls, provider, "task")

    @staticmethod
    def _add(table: dict[str, Entry], name: str, cls: type, provider: str, kind: str) -> None:
        if name in table:
            first = table[name].provider
            other = first if provider == BUILTIN_PROVIDER else provider
            keeps = (
                f"{name!r} stays the builtin one; " if BUILTIN_PROVIDER in (first, provider) else ""
            )
            raise DuplicateName(
                f"duplicate {kind} {name!r}: provided by {first} and by {provider} ({keeps}"
                f"uninstall one, or skip {other} with {DISABLE_ENV}={other})"
            )
        table[name] = Entry(name, cls, provider)

    def register(self, kind: str, cls: Any, provider: str) -> None:
        """``add_method`` / ``add_task`` for a plugin's discovery hook: a mistake is recorded
        as a problem and sets the name aside (both claimants of a duplicate name)."""
        table = self.methods if kind == "method" else self.tasks
        try:
            (self.add_method if kind == "method" else self.add_task)(cls, provider)
        except ForgetbenchError as error:
            name = registered_name(cls)
            self.problems.append(str(error))
            if isinstance(error, DuplicateName) and BUILTIN_PROVIDER in (
                table[name].provider,
                provider,
            ):  # a plugin cannot take a builtin's name away: the builtin keeps it
                if provider == BUILTIN_PROVIDER:
                    table[name] = Entry(name, cls, provider)
            elif name:
                table.pop(name, None)
                self.unavailable[name] = str(error)

    def method(self, name: str) -> Entry:
        return self._lookup(self.methods, name, "method")

    def task(self, name: str) -> Entry:
        return self._lookup(self.tasks, name, "task")

    def _lookup(self, table: dict[str, Entry], name: str, kind: str) -> Entry:
        if name in table:
            return table[name]
        if name in self.unavailable:
            raise ForgetbenchError(f"{kind} {name!r} is not available: {self.unavailable[name]}")
        message = f"unknown {kind} {name!r}" + did_you_mean(name, table)
        failed = sorted(self.unavailable)
        if failed:
            message += f" (plugins that failed to load: {', '.join(failed)}; see forgetbench list)"
        raise ForgetbenchError(message)


def registered_name(cls: Any) -> str:
    """The name a method or task class registers under ('' when it has none)."""
    if isinstance(cls, type) and issubclass(cls, Task):
        metadata = getattr(cls, "metadata", None)
        return getattr(metadata, "name", "")
    return getattr(cls, "name", "") or ""


def check_class(cls: type, owner: str) -> None:
    """A method or task class's ``Config`` is a dataclass and its hooks are real hooks that
    take only arguments their hook passes; else one ForgetbenchError naming ``owner``."""
    config = getattr(cls, "Config", None)
    if config is not None and not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        raise ForgetbenchError(
            f"{owner}: Config must be a @dataclass (got {config!r}); decorate it with"
            " @dataclasses.dataclass"
        )
    problems = hook_problems(cls, per_run=True)
    if problems:
        raise ForgetbenchError(f"{owner}: {'; '.join(problems)}")


def hook_problems(obj: Any, per_run: bool) -> list[str]:
    """What is wrong with the ``forgetbench_*`` hooks of a Method class (``per_run``) or of a
    plugin module: unknown hook names (with a suggestion), arguments the hook does not pass,
    defaulted arguments, a hook without ``@hookimpl``, a hook of the other kind."""
    problems = []
    for name in sorted(n for n in dir(obj) if n.startswith(f"{hookspecs.PROJECT}_")):
        function = getattr(obj, name, None)
        marked = getattr(function, IMPL_MARK, None) is not None
        if name not in HOOK_ARGUMENTS:
            if marked:
                problems.append(f"unknown hook {name}" + did_you_mean(name, HOOK_ARGUMENTS))
            continue
        if not marked:
            problems.append(f"{name} lacks @hookimpl, so it is never called")
            continue
        if (name in DISCOVERY_HOOKS) == per_run:
            where = "on a Method class" if per_run else "at module level"
            problems.append(f"{name} is never called {where} (see docs/reference.md)")
            continue
        problems += _argument_problems(name, function, skip_self=per_run)
    return problems


def _argument_problems(name: str, function: Any, skip_self: bool) -> list[str]:
    parameters = list(inspect.signature(function).parameters.values())[int(skip_self) :]
    passed = HOOK_ARGUMENTS[name]
    problems = []
    for parameter in parameters:
        if parameter.name not in passed:
            problems.append(
                f"{name} takes {parameter.name!r}, which the hook does not pass"
                f" (it passes {', '.join(passed)})"
            )
        elif parameter.default is not inspect.Parameter.empty:
            problems.append(f"{name} gives {parameter.name!r} a default: pluggy never passes it")
    return problems


def _disabled() -> set[str]:
    return {name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()}


def plugin_manager() -> pluggy.PluginManager:
    """A plugin manager with forgetbench's hookspecs and nothing registered."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    return manager


def _load_one(manager: pluggy.PluginManager, entry_point, dist: str) -> str | None:
    """Import and register one entry point; returns what went wrong, or None."""
    skip = f"(fix it, or skip it with {DISABLE_ENV}={entry_point.name})"
    try:
        module = entry_point.load()
    except Exception as error:  # a broken third-party plugin must not break the others
        return f"failed to load: {type(error).__name__}: {error} {skip}"
    problems = hook_problems(module, per_run=False)
    if problems:
        return f"not loaded: {'; '.join(problems)} {skip}"
    try:
        manager.register(module, name=entry_point.name)
    except Exception as error:  # pluggy's own validation, should ours miss a case
        return f"not loaded: {error} {skip}"
    return None


def load_entry_points(
    manager: pluggy.PluginManager,
) -> tuple[dict[str, str], list[str], dict[str, str]]:
    """Import and register every ``forgetbench`` entry point not disabled.

    Returns ({plugin name: distribution}, problems, {plugin name: why it was set aside}). A
    plugin that fails to import or has a hook mistake is reported with its distribution and
    skipped; the others keep working. pluggy would silently skip a second entry point with a
    used name, so duplicates are detected here.
    """
    providers: dict[str, str] = {}
    problems: list[str] = []
    failed: dict[str, str] = {}
    disabled, seen_disabled = _disabled(), set()
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = entry_point.dist.name if entry_point.dist else "unknown distribution"
        if entry_point.name in disabled or dist in disabled:
            seen_disabled.update({entry_point.name, dist} & disabled)
            continue
        if entry_point.name in providers:
            problems.append(
                f"duplicate plugin name {entry_point.name!r}: {providers[entry_point.name]} and"
                f" {dist} (the second was not loaded)"
            )
            continue
        problem = _load_one(manager, entry_point, dist)
        if problem is not None:
            failed[entry_point.name] = f"plugin {entry_point.name!r} from {dist} {problem}"
            problems.append(failed[entry_point.name])
            continue
        providers[entry_point.name] = dist
    for name in sorted(disabled - seen_disabled):
        problems.append(f"{DISABLE_ENV}: no installed plugin or distribution is named {name!r}")
    return providers, problems, failed


def build_registry(manager: pluggy.PluginManager, providers: dict[str, str]) -> Registry:
    """Call the discovery hooks of every registered plugin and fill a Registry."""
    registry = Registry()
    for hook_name, kind in (
        ("forgetbench_register_methods", "method"),
        ("forgetbench_register_tasks", "task"),
    ):
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            provider = providers.get(impl.plugin_name, impl.plugin_name)
            try:
                impl.function(register=partial(registry.register, kind, provider=provider))
            except Exception as error:
                registry.problems.append(
                    f"plugin {impl.plugin_name!r} from {provider}: {hook_name} raised"
                    f" {type(error).__name__}: {error}"
                )
    return registry


_cached: Registry | None = None


def get_registry(reload: bool = False) -> Registry:
    """The process-wide registry of installed methods and tasks (loaded once)."""
    global _cached
    if _cached is None or reload:
        manager = plugin_manager()
        providers, problems, failed = load_entry_points(manager)
        registry = build_registry(manager, providers)
        registry.problems[:0] = problems
        registry.unavailable.update(failed)
        _cached = registry
    return _cached


def distribution_of(obj: Any) -> str:
    """The installed distribution that provides ``obj``'s module, else the module's name."""
    module = getattr(obj, "__module__", "") or ""
    top = module.split(".")[0]
    dists = importlib.metadata.packages_distributions().get(top)
    return dists[0] if dists else module


def run_plugin_manager(methods: list[Method]) -> pluggy.PluginManager:
    """A plugin manager for one run holding the active method instances.

    Methods are registered in reverse so that hooks run in the order the user gave
    (pluggy calls the last registered first). Two methods implementing one firstresult hook
    are a conflict: the second would be silently ignored, so it is an error.
    """
    manager = plugin_manager()
    for method in reversed(methods):
        try:
            check_class(type(method), f"method {method.name!r}")
        except ForgetbenchError as error:  # not through the registry: name its distribution
            raise ForgetbenchError(f"{error} ({distribution_of(type(method))})") from None
        manager.register(method, name=f"method:{method.name}")
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
