"""Training checkpoints for crash-safe, exactly resumable runs.

A checkpoint is a directory: ``model.safetensors`` (weights), ``tensors.safetensors``
(optimizer moments, RNG states) and ``state.json`` (step, optimizer hyper-parameters,
scheduler, the data-order and sampler generators, the prior sampler's and methods' state, the
loss curve, compute so far, the sha256 of both tensor files and its own). No pickle anywhere. It is
written to a temporary sibling and renamed into place, so a crash leaves the previous complete
checkpoint; a checkpoint whose files do not match their hashes is discarded, not used.

A :class:`CheckpointLock` beside it lets one process at a time use a checkpoint.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from forgetbench.cache import cache_root, hash_file, hash_json

TENSOR_FILES = ("model.safetensors", "tensors.safetensors")
log = logging.getLogger("forgetbench")


def checkpoint_dir(config_hash: str, seed: int) -> Path:
    """Where the checkpoint of a (config, seed) lives: identical runs share it."""
    return cache_root() / "checkpoints" / f"{config_hash[:32]}-seed{seed}"


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {"param_groups": state["param_groups"], "state": {}}
    for param_id, values in state["state"].items():
        entry = {}
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{param_id}.{key}"] = value.detach().cpu().contiguous()
                entry[key] = None
            else:
                entry[key] = value
        meta["state"][str(param_id)] = entry
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state = {}
    for param_id, values in meta["state"].items():
        state[int(param_id)] = {
            key: tensors[f"optimizer.{param_id}.{key}"] if value is None else value
            for key, value in values.items()
        }
    return {"state": state, "param_groups": meta["param_groups"]}


class Checkpointer:
    """Saves and restores everything a training loop needs to continue bit-for-bit.

    ``extra_state()`` / ``load_extra_state(state)`` carry JSON-able state owned by the caller
    (methods, compute counters).
    """

    def __init__(
        self,
        directory: Path,
        every: int,
        extra_state: Callable[[], dict] = dict,
        load_extra_state: Callable[[dict], None] = lambda state: None,
        on_save: Callable[[int], None] = lambda step: None,
    ):
        self.directory = Path(directory)
        self.every = every
        self.extra_state = extra_state
        self.load_extra_state = load_extra_state
        self.on_save = on_save

    def due(self, step: int, last_step: int) -> bool:
        return self.every > 0 and step % self.every == 0 and step < last_step

    def exists(self) -> bool:
        return (self.directory / "state.json").exists()

    def save(self, step: int, model, optimizer, scheduler, loop: dict[str, Any]) -> None:
        """Write the checkpoint of the state after ``step``."""
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".ckpt-", dir=self.directory.parent))
        try:
            save_model(model, str(tmp / "model.safetensors"))
            tensors, optimizer_meta = _flatten_optimizer(optimizer.state_dict())
            tensors["rng.torch"] = torch.get_rng_state()
            if torch.cuda.is_available():
                for index, rng in enumerate(torch.cuda.get_rng_state_all()):
                    tensors[f"rng.cuda.{index}"] = rng
            save_file(tensors, str(tmp / "tensors.safetensors"))
            state = {
                "files": {name: hash_file(tmp / name) for name in TENSOR_FILES},
                "step": step,
                "optimizer": optimizer_meta,
                "scheduler": scheduler.state_dict(),
                "loop": loop,
                "extra": self.extra_state(),
            }
            state = json.loads(json.dumps(state, default=_json_default))  # as it will be read
            state["sha256"] = hash_json(state)
            (tmp / "state.json").write_text(json.dumps(state))
            old = self.directory.with_name(self.directory.name + ".old")
            if self.directory.exists():
                self.directory.rename(old)
            tmp.rename(self.directory)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.on_save(step)

    def restore(self, model, optimizer, scheduler) -> tuple[int, dict[str, Any]] | None:
        """Load the checkpoint into model, optimizer, scheduler and RNGs; returns (step, loop
        state), or None when there is no usable checkpoint (a corrupt one is discarded)."""
        state = self._verified_state()
        if state is None:
            return None
        load_model(model, str(self.directory / "model.safetensors"))
        tensors = load_file(str(self.directory / "tensors.safetensors"))
        optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(tensors["rng.torch"])
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
        self.load_extra_state(state["extra"])
        return int(state["step"]), state["loop"]

    def _verified_state(self) -> dict[str, Any] | None:
        """The checkpoint's state when its files match the hashes it recorded; a corrupt or
        unreadable checkpoint is reported and deleted (training then starts over)."""
        if not self.exists():
            return None
        try:
            state = json.loads((self.directory / "state.json").read_text())
            recorded = state["files"]
            bad = [n for n in TENSOR_FILES if hash_file(self.directory / n) != recorded.get(n)]
            if state.pop("sha256") != hash_json(state):
                bad.append("state.json")
            problem = f"{', '.join(bad)} changed since it was written" if bad else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            problem = f"unreadable: {type(error).__name__}: {error}"
        if problem is None:
            return state
        log.warning(
            "checkpoint %s is corrupt (%s): discarding it, training starts from step 0",
            self.directory,
            problem,
        )
        self.clear()
        return None

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class CheckpointLock:
    """An exclusive ``flock`` on ``<checkpoint>.lock``: the process holding it is the only one
    that restores, writes or deletes that checkpoint. The OS releases it when its process dies,
    so a crashed run never leaves it held."""

    def __init__(self, directory: Path):
        self.path = Path(directory).with_name(Path(directory).name + ".lock")
        self._handle = None

    def acquire(self) -> bool:
        """Take the lock without waiting; False when another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = open(self.path, "a+")  # noqa: SIM115 (held until release)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                return False
            # A holder deletes the file when it releases: retry if we locked a deleted one.
            if self.path.exists() and os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
            handle.close()
        handle.truncate(0)
        handle.write(f"{socket.gethostname()}:{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return True

    def holder(self) -> str:
        """``host:pid`` of the process holding the lock, as it wrote it (may be empty)."""
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def release(self) -> None:
        if self._handle is None:
            return
        self.path.unlink(missing_ok=True)  # while still locked: nobody can lock a stale file
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable in a checkpoint: {type(value).__name__}")
