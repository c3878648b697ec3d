"""Core: config routing, the registry and hook conflicts, derived metrics, the leaderboard."""

import dataclasses

import numpy as np
import pytest

from forgetbench import hookspecs
from forgetbench.api import EvalResult, Method, PriorSampler, TaskMetadata
from forgetbench.config import TrainConfig, build_config, parse_set, split_overrides
from forgetbench.errors import ForgetbenchError
from forgetbench.evaluation import derived_metrics
from forgetbench.hookspecs import hookimpl
from forgetbench.registry import Registry, get_registry, plugin_manager, run_plugin_manager
from forgetbench.report import leaderboard
from forgetbench.store import Metric, Store


@dataclasses.dataclass
class SmallConfig:
    ratio: float = 0.5
    names: tuple[str, ...] = ("a",)
    flag: bool = False
    limit: int | None = None

    def __post_init__(self):
        if not 0 <= self.ratio <= 1:
            raise ValueError(f"ratio must be in [0, 1], got {self.ratio}")


def test_parse_set_and_type_conversion():
    overrides = parse_set(["ratio=0.25", "names=a,b", "flag=yes", "limit=none"])
    config = build_config(SmallConfig, overrides, "small")
    assert config == SmallConfig(0.25, ("a", "b"), True, None)
    assert build_config(SmallConfig, {"limit": "7"}, "small").limit == 7


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["ratio=2"], "ratio must be in"),
        (["ratio=abc"], "small.ratio expects a number"),
        (["flag=maybe"], "expects true or false"),
        (["ratoi=0.1"], "did you mean 'ratio'"),
    ],
)
def test_bad_values_are_one_clear_error(pairs, message):
    with pytest.raises(ForgetbenchError, match=message):
        build_config(SmallConfig, parse_set(pairs), "small")


def test_parse_set_needs_key_and_value():
    with pytest.raises(ForgetbenchError, match="key=value"):
        parse_set(["lr"])


def test_overrides_route_to_sections_and_ambiguity_is_an_error():
    sections = {"train": TrainConfig, "small": SmallConfig, "other": SmallConfig}
    routed = split_overrides({"lr": "1e-4", "small.ratio": "0.1"}, sections)
    assert routed["train"] == {"lr": "1e-4"}
    assert routed["small"] == {"ratio": "0.1"}
    with pytest.raises(ForgetbenchError, match="ambiguous"):
        split_overrides({"ratio": "0.1"}, sections)
    with pytest.raises(ForgetbenchError, match=r"unknown config section 'smal'.*did you mean"):
        split_overrides({"smal.ratio": "0.1"}, sections)


def test_train_config_rejects_negative_lr():
    with pytest.raises(ForgetbenchError, match="lr must be > 0"):
        build_config(TrainConfig, {"lr": "-1"}, "train")


class Claims(Method):
    name = "claims"

    @hookimpl
    def forgetbench_prior_sampler(self, ctx, data):
        return None


class AlsoClaims(Claims):
    name = "also-claims"


def test_two_methods_claiming_a_firstresult_hook_conflict():
    with pytest.raises(ForgetbenchError, match="also-claims and claims both implement"):
        run_plugin_manager([Claims(), AlsoClaims()])
    run_plugin_manager([Claims()])  # alone it is fine


def test_misspelled_hook_is_one_clear_error():
    class Typo(Method):
        name = "typo"

        @hookimpl
        def forgetbench_regulariser(self, ctx):  # British spelling: not a hook
            return None

    with pytest.raises(ForgetbenchError, match="did you mean 'forgetbench_regularizer'"):
        run_plugin_manager([Typo()])


def test_registry_duplicates_and_suggestions():
    registry = Registry()
    registry.add_method(Claims, "dist-a")
    with pytest.raises(ForgetbenchError, match=r"duplicate method 'claims'.*dist-a.*dist-b"):
        registry.add_method(Claims, "dist-b")
    with pytest.raises(ForgetbenchError, match="did you mean 'claims'"):
        registry.method("clams")


def test_builtins_register_through_entry_points():
    registry = get_registry(reload=True)
    assert {"finetune", "random", "mixcd"} <= set(registry.methods)
    assert {"wordnet", "mnli"} <= set(registry.tasks)
    assert registry.methods["finetune"].provider == "forgetbench"


def test_disable_plugins_env(monkeypatch):
    monkeypatch.setenv("FORGETBENCH_DISABLE_PLUGINS", "mixcd")
    try:
        assert "mixcd" not in get_registry(reload=True).methods
    finally:
        monkeypatch.delenv("FORGETBENCH_DISABLE_PLUGINS")
        get_registry(reload=True)


def test_every_hookspec_is_documented():
    """Like datasette: a hook without a section in docs/reference.md fails the build."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "reference.md").read_text()
    manager = plugin_manager()
    names = [n for n in dir(manager.hook) if n.startswith("forgetbench_")]
    assert len(names) >= 9
    for name in names:
        assert f"### `{name}(" in text, f"{name} is not documented in docs/reference.md"


FAKE = TaskMetadata(name="fake", family="text-classification", description="")
NEW_EVAL = np.array([0, 1], bool)


def test_derived_metrics_by_hand():
    before = {
        "prior": EvalResult({"accuracy": 0.8, "loss": 0.5}, np.array([1, 1, 1, 0], bool)),
        "new": EvalResult({"accuracy": 0.1, "loss": 3.0}, NEW_EVAL),
    }
    after = {
        "prior": EvalResult({"accuracy": 0.6, "loss": 0.9}, np.array([1, 0, 0, 1], bool)),
        "new": EvalResult({"accuracy": 0.9, "loss": 0.2}, NEW_EVAL),
    }
    rows = {(m.split, m.stage, m.name): m for m in derived_metrics(FAKE, before, after)}
    assert rows["prior", "derived", "forgetting"].value == pytest.approx(0.2)
    assert rows["new", "derived", "gain"].value == pytest.approx(0.8)
    # two of four prior eval examples were right before and wrong after
    assert rows["prior", "derived", "cd_rate"].value == pytest.approx(0.5)
    assert rows["prior", "after", "loss"].higher_is_better is False
    assert rows["prior", "after", "accuracy"].higher_is_better is True


def test_derived_metrics_follow_the_tasks_main_metrics_and_directions():
    """A family whose prior metric is lower-is-better (an error rate) and whose new metric is
    F1: forgetting is the rise of the error, gain the rise of F1, in their own units."""
    meta = TaskMetadata(
        name="mt",
        family="translation",
        description="",
        prior_metric="ter",
        new_metric="f1",
        lower_is_better=frozenset({"ter", "loss"}),
    )
    prior = np.array([1, 1, 0], bool)
    before = {"prior": EvalResult({"ter": 0.30}, prior), "new": EvalResult({"f1": 0.2}, NEW_EVAL)}
    after = {"prior": EvalResult({"ter": 0.45}, prior), "new": EvalResult({"f1": 0.5}, NEW_EVAL)}
    rows = {(m.split, m.stage, m.name): m for m in derived_metrics(meta, before, after)}
    assert rows["prior", "derived", "forgetting"].value == pytest.approx(0.15)
    assert rows["new", "derived", "gain"].value == pytest.approx(0.3)
    assert rows["prior", "after", "ter"].higher_is_better is False
    assert rows["prior", "derived", "cd_rate"].value == 0.0


def test_a_main_metric_the_task_does_not_report_is_a_clear_error():
    meta = dataclasses.replace(FAKE, prior_metric="f1")
    result = {"prior": EvalResult({"accuracy": 0.5}, NEW_EVAL), "new": EvalResult({}, NEW_EVAL)}
    with pytest.raises(ForgetbenchError, match="main metric 'f1' is not among its prior metrics"):
        derived_metrics(meta, result, result)


def _store_run(
    store, methods, seed, prior, new, config_hash=None, ok=True, metric="accuracy", higher=True
):
    run_id = store.start_run(
        task="fake",
        task_version="1",
        family="text-classification",
        prior_metric=metric,
        new_metric=metric,
        methods=methods,
        config={},
        config_hash=config_hash or methods,
        seed=seed,
        model="m",
        data_fingerprints={},
        versions={},
    )
    if not ok:
        store.fail_run(run_id, "boom")
        return run_id
    store.finish_run(
        run_id,
        [
            Metric("prior", "after", metric, prior, higher),
            Metric("new", "after", metric, new, higher),
            Metric("prior", "derived", "forgetting", 0.9 - prior, False),
        ],
    )
    return run_id


def test_leaderboard_mean_std_pareto_and_failed_runs_excluded(db):
    store = Store(db)
    _store_run(store, "a", 0, 0.70, 0.90)
    _store_run(store, "a", 1, 0.80, 0.80)
    _store_run(store, "b", 0, 0.60, 0.80)  # dominated by a's mean (0.75, 0.85)
    _store_run(store, "c", 0, 0.90, 0.50)
    _store_run(store, "c", 1, 0.10, 0.10, ok=False)
    rows = {row.methods: row for row in leaderboard(store)}
    assert set(rows) == {"a", "b", "c"}
    assert rows["a"].mean("prior_after") == pytest.approx(0.75)
    assert rows["a"].std("prior_after") == pytest.approx(np.std([0.7, 0.8], ddof=1))
    assert rows["a"].mean("forgetting") == pytest.approx(0.15)
    assert len(rows["c"].seeds) == 1  # the failed seed never shows
    assert rows["a"].pareto
    assert rows["c"].pareto
    assert not rows["b"].pareto


def test_leaderboard_reads_each_runs_main_metric_and_its_direction(db):
    """With an error rate (lower is better) the Pareto marks flip: the lowest errors win."""
    store = Store(db)
    _store_run(store, "a", 0, 0.70, 0.90, metric="error", higher=False)
    _store_run(store, "b", 0, 0.60, 0.80, metric="error", higher=False)  # lower on both: best
    _store_run(store, "c", 0, 0.50, 0.95, metric="error", higher=False)
    rows = {row.methods: row for row in leaderboard(store)}
    assert rows["a"].prior_metric == "error"
    assert rows["a"].mean("prior_after") == pytest.approx(0.70)
    assert rows["b"].pareto
    assert rows["c"].pareto
    assert not rows["a"].pareto  # dominated by b: higher error on both


def test_prior_sampler_count_rounds_the_share():
    class Fixed(PriorSampler):
        def sample(self, n, rng):
            return np.zeros(n, dtype=np.int64)

    assert Fixed(0.25).count(32) == 8
    assert Fixed(0.0).count(32) == 0
    assert Fixed(0.3).count(16) == 5  # 4.8: to the nearest, not down
    assert Fixed(0.1).count(8) == 1  # 0.8


def test_hookspec_module_marks_firstresult():
    manager = plugin_manager()
    assert manager.hook.forgetbench_wrap_model.spec.opts["firstresult"]
    assert manager.hook.forgetbench_prior_sampler.spec.opts["firstresult"]
    assert not manager.hook.forgetbench_regularizer.spec.opts["firstresult"]
    assert hookspecs.PROJECT == "forgetbench"


def test_trust_remote_code_is_off_unless_asked_and_recorded_when_on(tiny_registry):
    from forgetbench.runner import RunRequest, resolve

    plain = resolve(RunRequest(task="tiny"), tiny_registry)
    trusted = resolve(RunRequest(task="tiny", trust_remote_code=True), tiny_registry)
    assert "trust_remote_code" not in plain.config
    assert trusted.config["trust_remote_code"] is True
    assert plain.config_hash != trusted.config_hash


def test_method_label_shows_non_default_method_and_train_settings(tiny_registry):
    from forgetbench.runner import RunRequest, method_label, resolve

    resolved = resolve(
        RunRequest(
            task="tiny",
            methods=["mixcd", "wise-ft"],
            overrides={"mixcd.mix_ratio": "0.5", "lr": "0.01"},
        ),
        tiny_registry,
    )
    default = TrainConfig(**type(resolved.task).train_defaults)
    label = method_label(resolved.methods, resolved.train, default)
    assert label == "mixcd(mix_ratio=0.5)+wise-ft [lr=0.01]"
    plain = resolve(RunRequest(task="tiny", methods=["mixcd"]), tiny_registry)
    assert method_label(plain.methods, plain.train, default) == "mixcd"


def test_run_label_names_what_the_hash_covers_and_nothing_else(tiny_registry):
    """Two configs never share a label: the task config's changes and ``--prior-model`` are in
    it; settings the hash leaves out (device, checkpoints) are not, so one config has one."""
    from forgetbench.runner import RunRequest, resolve, run_label

    def label(overrides, **request):
        run = RunRequest(task="tiny", methods=["mixcd"], overrides=overrides, **request)
        return run_label(resolve(run, tiny_registry))

    assert label({}) == "mixcd"
    assert label({"lr": "0.01", "checkpoint_every": "5", "device": "cpu"}) == "mixcd [lr=0.01]"
    small, large = label({"task.new_train_size": "16"}), label({"task.new_train_size": "24"})
    assert small == "mixcd [task.new_train_size=16]"
    assert large == "mixcd [task.new_train_size=24]"


def test_a_literal_setting_takes_only_its_choices():
    from typing import Literal

    @dataclasses.dataclass
    class Modes:
        mode: Literal["fast", "slow"] = "fast"
        level: Literal[1, 2] = 1

    assert build_config(Modes, {"mode": "slow", "level": "2"}, "m") == Modes("slow", 2)
    with pytest.raises(ForgetbenchError, match=r"m.mode must be one of fast, slow, got 'z'"):
        build_config(Modes, {"mode": "z"}, "m")


@pytest.mark.parametrize(("option", "name"), [("--method", "mixcd"), ("--task", "wordnet")])
def test_list_shows_a_plugins_settings_with_their_defaults_and_help(option, name):
    """``forgetbench list --method/--task NAME``: every ``--set`` key of the plugin's Config,
    read from the dataclass itself, with its default and help; a task adds its budget."""
    from typer.testing import CliRunner

    from forgetbench.cli import app

    result = CliRunner().invoke(app, ["list", option, name], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    entry = get_registry().method(name) if option == "--method" else get_registry().task(name)
    prefix = f"{name}." if option == "--method" else "task."
    rows = [line.split("│") for line in result.output.splitlines() if line.startswith("│")]
    shown = {cells[1].strip(): (cells[3].strip(), cells[4].strip()) for cells in rows}
    for field in dataclasses.fields(entry.cls.Config):
        default, text = shown[prefix + field.name]
        assert default == repr(field.default)
        assert text == field.metadata["help"]
    if option == "--task":
        assert f"steps={entry.cls.train_defaults['steps']}" in result.output


def test_list_off_a_terminal_keeps_each_description_on_one_line(monkeypatch):
    from typer.testing import CliRunner

    from forgetbench.cli import app

    monkeypatch.delenv("COLUMNS", raising=False)
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    for name, entry in get_registry().methods.items():
        [line] = [line for line in result.output.splitlines() if line.startswith(f"│ {name} ")]
        assert entry.cls.description in line


def test_stage0_trains_on_the_runs_device_whatever_its_spec_says(db, monkeypatch):
    """``--set device=cpu`` holds for stage 0 too. Stage 0 used to train on its spec's device
    (``auto``: the GPU) and swap accelerate's state under the run, whose model then sat on the
    GPU and its batches on the CPU (seen on an H200). Here the spec names ``cuda``, which a
    machine without one refuses: the run must not try."""
    from forgetbench import prior
    from forgetbench.runner import RunRequest, execute
    from forgetbench.testing import TinyTextTask, registry_with

    class CudaStage0(TinyTextTask):
        metadata = dataclasses.replace(TinyTextTask.metadata, name="tiny-cuda-stage0")

        @property
        def stage0(self):
            spec = super().stage0
            return dataclasses.replace(spec, train=dataclasses.replace(spec.train, device="cuda"))

    devices, make = [], prior.make_accelerator
    monkeypatch.setattr(prior, "make_accelerator", lambda t: devices.append(t.device) or make(t))
    sizes = {f"task.{split}_size": "16" for split in ("prior_train", "prior_eval", "new_train")}
    overrides = {**sizes, "task.new_eval_size": "16", "task.stage0_steps": "2", "device": "cpu"}
    request = RunRequest("tiny-cuda-stage0", ["finetune"], 0, 2, overrides)
    run_id = execute(request, db=db, registry=registry_with(tasks=(CudaStage0,)))
    assert devices == ["cpu"]
    assert Store(db).get_run(run_id)["status"] == "ok"
