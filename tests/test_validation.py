"""Bad input fails early with one clear error naming the key: ``--set`` parsing, routing and
config validation (fuzzed), and the CLI's exit code and stderr line."""

import dataclasses
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forgetbench.cli import main
from forgetbench.config import TrainConfig, build_config, check, parse_set, split_overrides
from forgetbench.errors import ForgetbenchError
from forgetbench.store import Store


@dataclass
class SmallConfig:
    """A plugin-style config with every kind of field ``--set`` converts."""

    mix_ratio: float = 0.5
    bins: int = 4
    enabled: bool = True
    schedule: str = "linear"
    layers: tuple[int, ...] = (1, 2)
    limit: int | None = None

    def __post_init__(self):
        check(0 <= self.mix_ratio <= 1, f"mix_ratio must be in [0, 1], got {self.mix_ratio}")
        check(self.bins >= 1, f"bins must be >= 1, got {self.bins}")
        check(self.limit is None or self.limit > 0, f"limit must be > 0, got {self.limit}")


SECTIONS = {"train": TrainConfig, "small": SmallConfig, "empty": None}
TRAIN_FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
SMALL_FIELDS = [f.name for f in dataclasses.fields(SmallConfig)]


def configure(pairs: list[str]) -> tuple[TrainConfig, SmallConfig]:
    """What ``forgetbench run --set ...`` does with its overrides."""
    routed = split_overrides(parse_set(pairs), SECTIONS)
    return (
        build_config(TrainConfig, routed["train"], "train"),
        build_config(SmallConfig, routed["small"], "small"),
    )


keys = st.one_of(
    st.sampled_from(TRAIN_FIELDS + SMALL_FIELDS),
    st.sampled_from(TRAIN_FIELDS).map("train.{}".format),
    st.sampled_from(SMALL_FIELDS).map("small.{}".format),
    st.sampled_from(["empty.x", "tran.lr", "lrr", ".lr", "train.", "a.b.c", ""]),
    st.text(max_size=12),
    st.text(max_size=8).map("train.{}".format),
)
values = st.one_of(
    st.text(max_size=12),
    st.integers().map(str),
    st.floats().map(repr),
    st.sampled_from(["nan", "-inf", "inf", "1e400", "0x10", "010", "true", "none", "1,2", ""]),
)
pairs = st.lists(st.one_of(st.tuples(keys, values).map("=".join), st.text(max_size=20)), max_size=6)


@settings(max_examples=300, deadline=None)
@given(pairs)
def test_any_input_is_accepted_or_a_forgetbench_error(given_pairs):
    try:
        train, small = configure(given_pairs)
    except ForgetbenchError as error:
        message = str(error)
    else:
        message = None
    if message is not None:
        assert message
        assert "\n" not in message  # the CLI prints it as one line
        return
    assert 0 < train.lr < math.inf
    assert 0 <= train.weight_decay < math.inf
    assert train.steps >= 0
    assert 0 <= small.mix_ratio <= 1


finite = {"allow_nan": False, "allow_infinity": False}
valid_train = st.fixed_dictionaries(
    {
        "steps": st.integers(0, 10**9),
        "batch_size": st.integers(1, 10**6),
        "lr": st.floats(min_value=0, exclude_min=True, **finite),
        "weight_decay": st.floats(min_value=0, **finite),
        "warmup_ratio": st.floats(min_value=0, max_value=1, exclude_max=True),
        "max_grad_norm": st.floats(min_value=0, **finite),
        "eval_batch_size": st.integers(1, 10**6),
        "mixed_precision": st.sampled_from(["no", "fp16", "bf16"]),
        "device": st.sampled_from(["auto", "cpu", "cuda"]),
        "checkpoint_every": st.integers(0, 10**6),
    }
)
valid_small = st.fixed_dictionaries(
    {
        "mix_ratio": st.floats(min_value=0, max_value=1),
        "bins": st.integers(1, 10**6),
        "enabled": st.booleans(),
        "schedule": st.text(st.characters(exclude_characters=",="), min_size=1).map(str.strip),
        "layers": st.lists(st.integers(-(10**6), 10**6), max_size=4).map(tuple),
        "limit": st.one_of(st.none(), st.integers(1, 10**6)),
    }
).filter(lambda small: small["schedule"] and small["schedule"].lower() not in ("none", "null"))


def as_text(value) -> str:
    """How a user would write ``value`` after ``--set key=``."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return repr(value) if isinstance(value, float) else str(value)


@settings(max_examples=150, deadline=None)
@given(valid_train, valid_small, st.booleans())
def test_valid_values_round_trip(train_values, small_values, qualify):
    prefix = "train." if qualify else ""
    given_pairs = [f"{prefix}{k}={as_text(v)}" for k, v in train_values.items()]
    given_pairs += [f"small.{k}={as_text(v)}" for k, v in small_values.items()]
    train, small = configure(given_pairs)
    assert dataclasses.asdict(train) == train_values
    assert dataclasses.asdict(small) == small_values


out_of_range = st.one_of(
    st.tuples(st.just("lr"), st.floats(max_value=0, allow_nan=False).map(repr)),
    st.tuples(st.just("lr"), st.sampled_from(["nan", "inf", "1e400"])),
    st.tuples(st.just("steps"), st.integers(max_value=-1).map(str)),
    st.tuples(st.just("steps"), st.just("nan")),
    st.tuples(st.just("batch_size"), st.integers(max_value=0).map(str)),
    st.tuples(st.just("weight_decay"), st.floats(max_value=0, exclude_max=True).map(repr)),
    st.tuples(st.just("weight_decay"), st.just("inf")),
    st.tuples(
        st.just("warmup_ratio"),
        st.one_of(st.floats(min_value=1), st.floats(max_value=0, exclude_max=True)).map(repr),
    ),
    st.tuples(st.just("mixed_precision"), st.sampled_from(["fp8", "", "yes"])),
    st.tuples(st.just("mix_ratio"), st.floats(min_value=1, exclude_min=True).map(repr)),
    st.tuples(st.just("mix_ratio"), st.just("nan")),
    st.tuples(st.just("bins"), st.sampled_from(["0", "-3", "2.5", "four"])),
    st.tuples(st.just("enabled"), st.sampled_from(["maybe", "2"])),
)


@settings(max_examples=200, deadline=None)
@given(out_of_range)
def test_out_of_range_values_are_rejected_naming_the_key(key_value):
    key, value = key_value
    with pytest.raises(ForgetbenchError) as raised:
        configure([f"{key}={value}"])
    assert key in str(raised.value)


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        (["lrr=1e-4"], "unknown --set key 'lrr' (did you mean 'lr'?)"),
        (["train.stesp=3"], "unknown key train.stesp (did you mean 'steps'?)"),
        (
            ["smal.bins=3"],
            "unknown config section 'smal' in --set smal.bins (did you mean 'small'?)",
        ),
        (["lr"], "--set expects key=value, got 'lr'"),
        (["=3"], "--set expects key=value, got '=3'"),
        (["train.a\nb=1"], "--set expects key=value, got 'train.a\\nb=1'"),
        (["empty.x=1"], "unknown --set key empty.x: empty has no settings"),
    ],
)
def test_unknown_keys_suggest_a_name(pairs, expected):
    with pytest.raises(ForgetbenchError) as raised:
        configure(pairs)
    assert str(raised.value) == expected


def test_a_key_two_sections_share_must_be_qualified():
    @dataclass
    class Clashing:
        lr: float = 0.1

    with pytest.raises(
        ForgetbenchError, match=r"ambiguous: qualify it as one of train\.lr, other\.lr"
    ):
        split_overrides({"lr": "0.2"}, {"train": TrainConfig, "other": Clashing})
    routed = split_overrides({"other.lr": "0.2"}, {"train": TrainConfig, "other": Clashing})
    assert build_config(Clashing, routed["other"], "other").lr == 0.2


def test_later_pairs_win():
    assert parse_set(["lr=1", " lr = 2 "]) == {"lr": "2"}


# -- the command line: exit code 1 and one line on stderr, before any data or model is loaded --

CLI_CASES = {
    "misspelled method": (
        ["run", "--method", "mixc", "--task", "wordnet"],
        "error: unknown method 'mixc' (did you mean 'mixcd'?)",
    ),
    "unknown method": (["run", "--method", "nosuch", "--task", "wordnet"], "did you mean one of: "),
    "misspelled task": (["run", "--task", "wordnt"], "error: unknown task 'wordnt' (did you mean"),
    "negative lr": (
        ["run", "--task", "wordnet", "--set", "lr=-1"],
        "error: invalid train config: lr must be > 0, got -1.0",
    ),
    "negative steps": (
        ["run", "--task", "wordnet", "--steps", "-5"],
        "error: invalid train config: steps must be >= 0, got -5",
    ),
    "unknown key": (
        ["run", "--task", "wordnet", "--set", "lrr=1e-4"],
        "error: unknown --set key 'lrr' (did you mean 'lr'?)",
    ),
}


def assert_nothing_ran(folder: Path) -> None:
    """No run row was stored and no cache written: the error came before any work."""
    results = folder / "results.db"
    if results.exists():
        assert Store(str(results)).get_runs() == []
    assert not (folder / "cache").exists()


def test_console_script_exits_1_with_one_line(tmp_path):
    """The installed ``forgetbench`` script itself (one process: each spends seconds importing)."""
    args, expected = CLI_CASES["misspelled method"]
    command = str(Path(sys.executable).with_name("forgetbench"))
    result = subprocess.run(
        [command, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert result.stderr == expected + "\n"
    assert result.stdout == ""
    assert_nothing_ran(tmp_path)


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_rejects_bad_input_in_one_line(case, tmp_path, monkeypatch, capsys):
    """``forgetbench.cli.main`` in this process, as the console script calls it."""
    args, expected = CLI_CASES[case]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["forgetbench", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    stderr = capsys.readouterr().err
    assert exited.value.code == 1
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith("error: ")
    assert expected in stderr
    assert_nothing_ran(tmp_path)
