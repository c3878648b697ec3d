"""Content-addressed on-disk cache: stage-0 models and prior predictions.

An entry is a directory named by a sha256 key, written to a temporary sibling and renamed into
place (so a crash never leaves a half-written entry), with ``manifest.json`` holding the sha256
of every file. An entry whose files do not match their manifest is reported and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CACHE_ENV = "FORGETBENCH_CACHE"
MANIFEST = "manifest.json"
log = logging.getLogger("forgetbench")
# wall seconds this process spent building entries (outermost builds), and the nesting depth
_building = {"seconds": 0.0, "depth": 0}


def cache_root() -> Path:
    """``$FORGETBENCH_CACHE``, else ``$XDG_CACHE_HOME/forgetbench`` (``~/.cache/forgetbench``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "forgetbench"


def hash_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def hash_file(path: Path, digest: Any = None) -> str:
    digest = digest or hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_dir(path: Path, suffixes: tuple[str, ...] = (".safetensors", ".json", ".bin")) -> str:
    """sha256 over the names and contents of a directory's files with the given suffixes."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file() and p.suffix in suffixes):
        if file.name == MANIFEST:
            continue
        digest.update(str(file.relative_to(path)).encode())
        hash_file(file, digest)
    return digest.hexdigest()


def _verify(entry: Path) -> bool:
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        return all(hash_file(entry / name) == sha for name, sha in manifest["files"].items())
    except (OSError, ValueError, KeyError):
        return False


def build_seconds() -> float:
    """Wall seconds this process has spent building cache entries so far (writing and hashing
    included). A build that runs inside another one is counted once, as part of the outer one.
    The runner stores a run's share as ``Compute.cache_seconds``."""
    return _building["seconds"]


def cached_dir(kind: str, key: str, build: Callable[[Path], dict | None]) -> Path:
    """Return the verified cache entry ``<root>/<kind>/<key>``, building it when absent or corrupt.

    ``build(tmpdir)`` writes the entry's files into ``tmpdir`` and may return extra metadata for
    the manifest. The time a build takes is added to :func:`build_seconds`.
    """
    entry = cache_root() / kind / key
    if entry.is_dir():
        if _verify(entry):
            return entry
        log.warning("cache entry %s is corrupt (hash mismatch): rebuilding it", entry)
        shutil.rmtree(entry, ignore_errors=True)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=entry.parent))
    started = time.perf_counter()
    _building["depth"] += 1
    try:
        info = build(tmp) or {}
        files = {
            str(p.relative_to(tmp)): hash_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        (tmp / MANIFEST).write_text(json.dumps({"key": key, "files": files, **info}, indent=1))
        try:
            tmp.rename(entry)
        except OSError:  # another process finished the same entry first
            if not _verify(entry):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _building["depth"] -= 1
        if not _building["depth"]:
            _building["seconds"] += time.perf_counter() - started
    return entry


def manifest(entry: Path) -> dict[str, Any]:
    return json.loads((entry / MANIFEST).read_text())
