"""End-to-end tests call the real CLI in a subprocess, with a private store and cache."""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


def cli_in(tmp_path: Path, timeout: float = 900) -> Callable[..., subprocess.CompletedProcess]:
    """A ``cli(*args)`` that runs ``python -m forgetbench *args`` with its results database and
    cache under ``tmp_path`` (so tests never touch the user's), capturing its output."""
    env = {
        **os.environ,
        "FORGETBENCH_CACHE": str(tmp_path / "cache"),
        "FORGETBENCH_DB": str(tmp_path / "results.db"),
    }

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "forgetbench", *args],
            capture_output=True, text=True, env=env, timeout=timeout,
        )  # fmt: skip

    return cli
