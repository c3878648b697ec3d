"""What besides a model and its data can change a task's numbers: the task's identity (class,
name, version, config and the source code of its packages and the core) and the evaluation
settings (device, precision, batch, threads, kernels, installed versions). The caches of f0's
results (its prior-train predictions, its prior-eval scores) put these in their keys, so that a
cached result is only reused where it would be computed the same."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from forgetbench.config import config_dict

if TYPE_CHECKING:
    from forgetbench.api import Task
    from forgetbench.context import RunContext


def task_identity(task: Task) -> dict:
    """The task's class, name, version and config, and a digest of its packages' source."""
    cls = type(task)
    config = getattr(task, "config", None)
    return {
        "task": [cls.__module__, cls.__qualname__, task.metadata.name, task.metadata.version],
        "config": config_dict(config) if config is not None else None,
        "source": source_digest(tuple(_packages(cls))),
    }


def evaluation_settings(ctx: RunContext) -> dict:
    """What can change an evaluation's numbers besides the model and the data."""
    device = torch.device(ctx.device)
    accelerator = ctx.accelerator
    settings = {
        "device": device.type,
        "eval_batch_size": ctx.train.eval_batch_size,
        "precision": accelerator.state.mixed_precision
        if accelerator
        else ctx.train.mixed_precision,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "fp32": [
            torch.backends.cuda.matmul.fp32_precision,
            torch.backends.cudnn.conv.fp32_precision,
        ],
        "threads": torch.get_num_threads(),
        "cpu": [platform.machine(), torch.backends.cpu.get_cpu_capability()],
        "packages": installed_packages(),
    }
    if device.type == "cuda":
        settings["gpu"] = [
            torch.cuda.get_device_name(device),
            list(torch.cuda.get_device_capability(device)),
            torch.version.cuda,
            torch.backends.cudnn.version(),
        ]
    return settings


@functools.cache
def installed_packages() -> tuple[str, ...]:
    """``name==version`` of every installed distribution (read once per process)."""
    names = {
        f"{(d.metadata['Name'] or '').lower()}=={d.version}"
        for d in importlib.metadata.distributions()
    }
    return (f"python=={platform.python_version()}", *sorted(names))


def _packages(cls: type) -> list[str]:
    """The top-level packages (or modules) that define ``cls`` and its bases, and the core."""
    tops = {klass.__module__.split(".")[0] for klass in cls.__mro__}
    return sorted((tops - {"builtins", "abc"}) | {"forgetbench"})


@functools.cache
def source_digest(packages: tuple[str, ...]) -> str:
    """sha256 over the ``.py`` files of these packages as they are on disk (read once per
    process): a task or core edit that does not bump a version still changes the key."""
    digest = hashlib.sha256()
    for name in packages:
        module = sys.modules.get(name)
        paths = getattr(module, "__path__", None)
        if paths:
            files = sorted(
                f
                for root in paths
                for f in Path(root).rglob("*.py")
                if "__pycache__" not in f.parts
            )
        else:
            files = [Path(module.__file__)] if getattr(module, "__file__", None) else []
        digest.update(f"{name}:{len(files)}\0".encode())
        for file in files:
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()
