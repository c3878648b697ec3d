"""What a stored number carries besides its config: package versions and the source commit."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

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
    (``torch.tf32``: ``on`` on an Ampere or newer GPU by default, else ``off``). A plugin
    distribution installed from a local folder (``pip install -e``, or a path) also gets the
    sha256 of its source (``"<dist> source sha256"``): its version alone does not change when
    its code does. The core's own source is identified by the git sha instead."""
    versions = {"python": platform.python_version()}
    if tf32 is not None:
        versions["torch.tf32"] = "on" if tf32 else "off"
    for name in sorted({*CORE_PACKAGES, *extra.values()}):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if name in extra.values() and name != "forgetbench":
            digest = local_source_hash(name)
            if digest:
                versions[SOURCE_KEY.format(dist=name)] = digest
    return versions


# What a local plugin's source hash covers, and the folders it skips.
SOURCE_SUFFIXES = (".py", ".toml", ".cfg", ".json", ".yaml", ".yml", ".txt")
SKIPPED_DIRS = {".git", ".venv", "venv", "__pycache__", "build", "dist", "node_modules"}
SOURCE_KEY = "{dist} source sha256"


def local_source_hash(dist: str) -> str | None:
    """sha256 over the source files of a distribution installed from a local folder or file
    (PEP 610 ``direct_url.json`` with a ``file://`` URL), None for one from an index."""
    try:
        direct = importlib.metadata.distribution(dist).read_text("direct_url.json")
        url = json.loads(direct or "{}").get("url", "")
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None
    if not url.startswith("file://"):
        return None
    path = Path(unquote(urlparse(url).path))
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(source_files(path)):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()


def source_files(root: Path):
    """Source files under ``root``, build products and environments skipped."""
    for path in root.iterdir():
        if path.is_dir():
            if path.name not in SKIPPED_DIRS and not path.name.endswith(".egg-info"):
                yield from source_files(path)
        elif path.suffix in SOURCE_SUFFIXES:
            yield path


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
