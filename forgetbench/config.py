"""Configuration: the training budget, and ``--set key=value`` overrides of any config section.

Every config is a dataclass validated in ``__post_init__``; values given as strings are
converted to the field's type here, so a plugin's Config needs only plain type hints.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from forgetbench.errors import ForgetbenchError, did_you_mean


def check(condition: bool, message: str) -> None:
    """Raise ValueError(message) unless condition; for ``__post_init__`` validation."""
    if not condition:
        raise ValueError(message)


@dataclass
class TrainConfig:
    """Fine-tuning budget and optimiser. A task may change the defaults (``train_defaults``)."""

    steps: int = field(default=200, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=32, metadata={"help": "samples per step, rehearsal included"})
    lr: float = field(default=5e-5, metadata={"help": "AdamW peak learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW decoupled weight decay"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "linear warm-up share of steps"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0: off)"})
    eval_batch_size: int = field(
        default=128, metadata={"help": "samples per evaluation batch", "operational": True}
    )
    mixed_precision: str = field(default="no", metadata={"help": "no | fp16 | bf16"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda", "operational": True})
    checkpoint_every: int = field(
        default=0, metadata={"help": "checkpoint every N steps (0: off)", "operational": True}
    )

    def __post_init__(self):
        check(self.steps >= 0, f"steps must be >= 0, got {self.steps}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(math.isfinite(self.lr), f"lr must be finite, got {self.lr}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(
            math.isfinite(self.weight_decay),
            f"weight_decay must be finite, got {self.weight_decay}",
        )
        check(
            0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}"
        )
        check(self.max_grad_norm >= 0, f"max_grad_norm must be >= 0, got {self.max_grad_norm}")
        check(
            self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}"
        )
        check(
            self.mixed_precision in ("no", "fp16", "bf16"),
            f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}",
        )
        check(
            self.device in ("auto", "cpu", "cuda"),
            f"device must be auto, cpu or cuda, got {self.device!r}",
        )
        check(
            self.checkpoint_every >= 0,
            f"checkpoint_every must be >= 0, got {self.checkpoint_every}",
        )


def operational_settings() -> tuple[str, ...]:
    """The TrainConfig fields that say where and how a run computes, not what: they are stored
    with the run but left out of its config hash (a checkpointed run or one on another device
    is the same experiment and shares its leaderboard row)."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("operational"))


def parse_set(pairs: list[str]) -> dict[str, str]:
    """Parse ``["a=1", "mixcd.bins=4"]`` into a dict; later pairs win."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key or not key.isprintable():
            raise ForgetbenchError(f"--set expects key=value, got {pair!r}")
        parsed[key] = value.strip()
    return parsed


def _convert(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if not isinstance(value, str):
        # JSON round trips (stored configs) turn tuples into lists
        return tuple(value) if origin is tuple and isinstance(value, list) else value
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if value.lower() in ("none", "null", ""):
            return None
        return _convert(value, options[0], key)
    if origin in (tuple, list):
        (item_hint, *_rest) = typing.get_args(hint) or (str,)
        items = [item.strip() for item in value.split(",") if item.strip()]
        converted = [_convert(item, item_hint, key) for item in items]
        return tuple(converted) if origin is tuple else converted
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        for choice in choices:  # the choice's own type: Literal[1, 2] takes "1"
            if str(choice) == value:
                return choice
        names = ", ".join(str(choice) for choice in choices)
        raise ForgetbenchError(f"{key} must be one of {names}, got {value!r}")
    if hint is bool:
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ForgetbenchError(f"{key} expects true or false, got {value!r}")
    if hint in (int, float):
        try:
            number = hint(value) if hint is float else int(value, 0)
        except ValueError:
            raise ForgetbenchError(
                f"{key} expects {'an integer' if hint is int else 'a number'}, got {value!r}"
            ) from None
        if hint is float and not math.isfinite(number):  # NaN passes every range check
            raise ForgetbenchError(f"{key} expects a finite number, got {value!r}")
        return number
    return value


def build_config(cls: type, overrides: dict[str, Any], section: str, base: dict | None = None):
    """Instantiate dataclass ``cls`` from ``base`` defaults and string ``overrides``.

    Raises ForgetbenchError for unknown keys, wrong types and failed validation, naming the
    section (e.g. ``mixcd.mix_ratio must be in [0, 1]``).
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = dict(base or {})
    for key, value in overrides.items():
        if key not in names:
            raise ForgetbenchError(f"unknown key {section}.{key}" + did_you_mean(key, names))
        values[key] = _convert(value, hints[key], f"{section}.{key}")
    try:
        return cls(**values)
    except (ValueError, TypeError) as error:
        raise ForgetbenchError(f"invalid {section} config: {error}") from None


def split_overrides(overrides: dict[str, str], sections: dict[str, type | None]) -> dict[str, dict]:
    """Route ``key`` or ``section.key`` overrides to config sections.

    A bare key goes to the one section that has such a field; a key two sections share must be
    qualified. Unknown sections and keys are errors with a suggestion.
    """
    fields_of = {
        name: [f.name for f in dataclasses.fields(cls)] if cls is not None else []
        for name, cls in sections.items()
    }
    routed: dict[str, dict] = {name: {} for name in sections}
    for key, value in overrides.items():
        section, dot, name = key.rpartition(".")
        if dot:
            if section not in sections:
                raise ForgetbenchError(
                    f"unknown config section {section!r} in --set {key}"
                    + did_you_mean(section, sections)
                )
            if not fields_of[section]:  # no config dataclass: nothing would check the key
                raise ForgetbenchError(f"unknown --set key {key}: {section} has no settings")
            routed[section][name] = value
            continue
        owners = [section for section, names in fields_of.items() if key in names]
        if not owners:
            every = [n for names in fields_of.values() for n in names]
            raise ForgetbenchError(f"unknown --set key {key!r}" + did_you_mean(key, every))
        if len(owners) > 1:
            raise ForgetbenchError(
                f"--set {key} is ambiguous: qualify it as one of "
                + ", ".join(f"{owner}.{key}" for owner in owners)
            )
        routed[owners[0]][key] = value
    return routed


def settings(cls: type | None) -> list[tuple[str, str, Any, str]]:
    """A config dataclass's settings for ``forgetbench list --method/--task``: (name, type,
    default, help) per field, in declaration order."""
    if cls is None:
        return []
    hints = typing.get_type_hints(cls)
    rows = []
    for item in dataclasses.fields(cls):
        if item.default is not dataclasses.MISSING:
            default = item.default
        elif item.default_factory is not dataclasses.MISSING:
            default = item.default_factory()
        else:
            default = "(required)"
        hint = hints[item.name]
        kind = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
        rows.append((item.name, kind, default, item.metadata.get("help", "")))
    return rows


def config_dict(config: Any) -> dict[str, Any]:
    """A JSON-able dict of a config dataclass (None for no config)."""
    if config is None:
        return {}
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }
