"""What a stored number carries besides its config: package versions and the source commit."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

CORE_PACKAGES = (
    "forgetbench",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "numpy",
    "safetensors",
    "sqlalchemy",
    "pluggy",
    "torchmetrics",
)


def package_versions(extra: dict[str, str], tf32: bool | None = None) -> dict[str, str]:
    """Versions of Python, the core packages and the distributions providing the plugins;
    with ``tf32`` given, also whether the run's fp32 matrix products use TF32
    (``torch.tf32``: ``on`` on an Ampere or newer GPU by default, else ``off``)."""
    versions = {"python": platform.python_version()}
    if tf32 is not None:
        versions["torch.tf32"] = "on" if tf32 else "off"
    for name in sorted({*CORE_PACKAGES, *extra.values()}):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _git(*args: str) -> str:
    here = Path(__file__).resolve().parent
    done = subprocess.run(
        ["git", *args], cwd=here, capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()


def git_sha() -> str | None:
    """The commit of the forgetbench source tree, with ``-dirty`` if it has local changes."""
    try:
        sha = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha
