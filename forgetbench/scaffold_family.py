"""``forgetbench new-plugin family NAME``: a new task family as a plugin distribution.

The skeleton is a whole family that runs from the start on a toy problem (points near class
centres, a small residual MLP, a prior task and a new one that groups its centres), so that each
Task API member is there, working, to be replaced one at a time: its module docstring lists the
steps. Its tests check the parts alone (splits, a saved prior model loading back) and run every
builtin method on its first dataset through the real engine. The toy is chosen to
forget: plain fine-tuning loses prior accuracy and rehearsal wins it back.
"""

from __future__ import annotations

from pathlib import Path

from forgetbench.errors import ForgetbenchError
from forgetbench.registry import Registry, get_registry
from forgetbench.scaffold import PYPROJECT, names, render, write


def new_family(name: str, directory: Path, registry: Registry | None = None) -> Path:
    """Write the distribution ``forgetbench-<name>``: the family ``name`` and its first
    dataset, the task ``<name>-toy``, into ``directory``."""
    n = names(name)
    tasks = (registry or get_registry()).tasks.values()
    if name in {entry.cls.metadata.family for entry in tasks}:
        raise ForgetbenchError(
            f"task family {name!r} is installed: a new dataset of it is"
            f" forgetbench new-plugin task NAME --family {name}"
        )
    values = {"family": n.name, "module": n.module, "dist": n.dist, "cls": n.cls, "kind": "family"}
    return write(
        directory,
        {
            "pyproject.toml": render(PYPROJECT, name=n.name, **values),
            "README.md": render(README, **values),
            f"{n.module}.py": render(MODULE, **values),
            f"tests/test_{n.module}.py": render(TEST, **values),
        },
    )


README = """\
# $dist

The `$family` task family for forgetbench, with its first dataset, the task `$family-toy`: a
toy that runs as it is (points near class centres, a small MLP). Replace it step by step, as
the module's docstring lists, running the tests after each step.

    pip install -e .                  # then: forgetbench list
    pytest tests                      # every method on $family-toy: about 30 s on a CPU
    forgetbench run --task $family-toy --method mixcd

What a task returns and what the core checks: forgetbench's docs/tasks.md ("Adding a family")
and docs/reference.md ("Task API").
"""

MODULE = '''"""The ``$family`` task family: a forgetbench plugin.

A family is what its datasets share: the model, how examples become a batch, what
one example's loss and success are, and how a split is scored. Each dataset is a
subclass that loads its four splits (``load_data``) and names itself (``metadata``).

This skeleton is a whole family that runs from the start, on a toy problem: points
near class centres, a small residual MLP trained on a prior task (stage 0), then
fine-tuned on a new task that groups the same centres, the prior head kept. Replace it
step by step, running ``pytest`` after each:

1. ``${cls}Model``, ``new_model`` and ``architecture``:
   your model, and what tells one architecture from another. ``build_prior``,
   ``stage0`` (from pretrained weights, ``Stage0Spec.base`` names them: a model id, a
   hash of the files; from a config, a hash of it, as here), ``save_bundle`` /
   ``load_bundle`` and the head ``init_new_task`` adds follow the model.
2. ``collate`` and ``forward``: your inputs, then each example's loss, success and
   confidence from one forward pass. Success is the family's "right answer": the
   collateral-damage rate and mix-cd count the examples f0 got right and the
   fine-tuned model gets wrong.
3. ``${cls}ToyTask.load_data``:
   your data, four splits of examples: JSON-able dicts, each with an integer ``id``
   (unique across the splits) and what ``collate`` reads (here ``x``, ``label`` and
   ``source``, "prior" or "new": which head scores it). ``info`` gives the heads'
   sizes (``prior_classes``, ``new_classes``). Rename the task.
4. ``evaluate``: the default (kept here) reports ``accuracy``, the share of
   successes, and the mean ``loss``; a family whose main metric is anything else
   (MSE, BLEU, span F1) writes its own. ``TaskMetadata``'s ``prior_metric``,
   ``new_metric`` and ``lower_is_better`` name the main metrics.
5. ``layer_stack``, ``lora_target_modules`` and the features ``forward`` returns:
   what layer-wise methods, LoRA and LDIFS read from your model.
6. ``probe``: the features the fresh head reads, for the linear probe that gives
   FLOW's reference losses and LP-FT's head (``reference_losses``,
   ``reference_head``). A family whose new task has no fresh head drops all three.

The tests read ``accuracy`` and the toy's thresholds: change them with your metric
and data. Every member belongs to forgetbench's Task API
(docs/reference.md, "Task API"; docs/tasks.md, "Adding a family").
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from forgetbench.api import (
    ForgetbenchError,
    ModelBundle,
    PerSample,
    RunContext,
    Split,
    Stage0Spec,
    Task,
    TaskData,
    TaskMetadata,
    TrainConfig,
    check,
    fit_probe,
    hash_dir,
    hash_json,
    hookimpl,
)
from safetensors.torch import load_file, save_file
from torch import nn

FAMILY = "$family"
DIM = 16  # the size of the toy inputs
SIZES = ("prior_train_size", "prior_eval_size", "new_train_size", "new_eval_size")


@dataclasses.dataclass
class Config:
    """Settings, given with ``--set task.<field>=<value>``: the toy data's, then the
    model's."""

    prior_train_size: int = 2000
    prior_eval_size: int = 500
    new_train_size: int = 1000
    new_eval_size: int = 500
    prior_classes: int = 8
    new_classes: int = 4
    noise: float = dataclasses.field(
        default=2.0, metadata={"help": "spread of the points around their centre"}
    )
    width: int = dataclasses.field(default=64, metadata={"help": "hidden width"})
    depth: int = dataclasses.field(default=3, metadata={"help": "residual blocks"})
    stage0_steps: int = dataclasses.field(
        default=300, metadata={"help": "steps that train the prior model"}
    )

    def __post_init__(self):
        for size in SIZES:
            value = getattr(self, size)
            check(value >= 1, f"{size} must be >= 1, got {value}")
        check(self.prior_classes >= 2, "prior_classes must be >= 2")
        check(self.new_classes >= 2, "new_classes must be >= 2")
        check(
            self.new_classes <= self.prior_classes,
            "new_classes must be <= prior_classes",
        )
        check(self.noise >= 0, f"noise must be >= 0, got {self.noise}")
        check(self.width >= 1 and self.depth >= 1, "width and depth must be >= 1")
        check(self.stage0_steps >= 0, "stage0_steps must be >= 0")


# -- the model ----------------------------------------------------------------------


class Block(nn.Module):
    """One residual MLP block: x + fc2(gelu(fc1(norm(x))))."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class ${cls}Model(nn.Module):
    """A body the tasks share and a linear head per task (``prior``, then ``new``)."""

    def __init__(self, width: int, depth: int, heads: dict[str, int]):
        super().__init__()
        self.embed = nn.Linear(DIM, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.heads = nn.ModuleDict({k: nn.Linear(width, n) for k, n in heads.items()})


# -- the family ---------------------------------------------------------------------


class ${cls}Task(Task):
    """The family: each of its datasets subclasses this and implements ``load_data``."""

    Config = Config
    # A run's fine-tuning budget by default (``--steps``, ``--set lr=...`` change it).
    train_defaults: ClassVar[dict[str, Any]] = {"steps": 100, "lr": 1e-2}

    # -- the prior model: built, trained by the core (stage 0), cached, loaded -------

    def architecture(self) -> dict[str, Any]:
        c = self.config
        return {"family": FAMILY, "dim": DIM, "width": c.width, "depth": c.depth}

    def new_model(self, heads: dict[str, int]) -> nn.Module:
        c = self.config
        return ${cls}Model(c.width, c.depth, heads)

    def build_prior(self, ctx: RunContext, data: TaskData) -> ModelBundle:
        # The core seeds torch first: the same config gives the same initial weights.
        model = self.new_model({"prior": data.info["prior_classes"]})
        return ModelBundle(model, None, hash_json(self.architecture()), source=FAMILY)

    @property
    def stage0(self) -> Stage0Spec:
        train = TrainConfig(steps=self.config.stage0_steps, batch_size=32, lr=3e-3)
        base = hash_json(self.architecture())  # no pretrained weights: a config hash
        return Stage0Spec(train=train, base=base, key=self.architecture())

    def save_bundle(self, bundle: ModelBundle, directory: Path) -> None:
        state = dict(bundle.model.state_dict())
        save_file(state, str(directory / "model.safetensors"))
        heads = {name: head.out_features for name, head in bundle.model.heads.items()}
        written = {"architecture": self.architecture(), "heads": heads}
        (directory / "bundle.json").write_text(json.dumps(written))

    def load_bundle(self, directory: Path) -> ModelBundle:
        written = json.loads((directory / "bundle.json").read_text())
        if written.get("architecture") != self.architecture():
            raise ForgetbenchError(f"{directory} holds another architecture: {written}")
        model = self.new_model(written["heads"])
        model.load_state_dict(load_file(str(directory / "model.safetensors")))
        # Saved weights are named by a hash of their files.
        return ModelBundle(model, None, hash_dir(directory), f"prior-model:{directory}")

    def init_new_task(
        self, ctx: RunContext, bundle: ModelBundle, data: TaskData
    ) -> nn.Module:
        # A fresh head for the new task (the core seeds torch with the run seed first);
        # the parameters added here are the run's ``ctx.new_param_names``.
        classes = data.info["new_classes"]
        bundle.model.heads["new"] = nn.Linear(self.config.width, classes)
        return bundle.model

    # -- one step --------------------------------------------------------------------

    def collate(self, bundle: ModelBundle, examples: Sequence[dict[str, Any]]) -> dict:
        """Prior and new examples mixed (rehearsal): each row names its head."""
        return {
            "x": torch.tensor([e["x"] for e in examples], dtype=torch.float32),
            "labels": torch.tensor([e["label"] for e in examples]),
            "prior_head": torch.tensor([e["source"] == "prior" for e in examples]),
        }

    def forward(self, model, inputs, with_features: bool = False) -> PerSample:
        hidden, features = body(model, inputs["x"])
        # Every row through every head, then each row keeps its own head's result: no
        # data-dependent indexing, so a GPU never waits mid-forward. Stage 0 has the
        # prior head only.
        prior, labels = inputs["prior_head"], inputs["labels"]
        if "new" not in model.heads and not bool(prior.all()):  # before init_new_task
            raise ForgetbenchError("new-task rows, but the model has no new head yet")
        result = None
        for name, head in model.heads.items():
            mine = prior if name == "prior" else ~prior
            scored = score(head(hidden).float(), labels, mine)
            result = scored if result is None else choose(mine, scored, result)
        loss, success, confidence, logits = result
        taps = features if with_features else None
        return PerSample(loss, success, confidence, taps, logits)

    # -- what methods read -----------------------------------------------------------

    def feature_taps(self) -> str:
        return "the input embedding and the output of each residual block"

    def lora_target_modules(self, model: nn.Module) -> list[str]:
        return ["fc1", "fc2"]

    def layer_stack(self, model: nn.Module) -> list[nn.Module]:
        return list(model.blocks)

    def partitions(self, data: TaskData) -> dict[str, np.ndarray]:
        # mix-cd's auxiliary schemes, an integer bin per prior-train example; the first
        # is its default.
        return {"label": data.prior_train.column("label")}

    def reference_losses(self, ctx, model, split) -> torch.Tensor:
        """FLOW's reference: each example's loss under a linear probe on f0's features
        (f0 has no loss of its own on the new task: its new head is fresh)."""
        return self.probe(ctx, model, split)[0]

    def reference_head(self, ctx, model, split) -> dict[str, torch.Tensor]:
        """The fresh head set to that probe, as ``state_dict`` entries (LP-FT)."""
        _, weight, bias = self.probe(ctx, model, split)
        return {"heads.new.weight": weight.T.contiguous(), "heads.new.bias": bias}

    def probe(self, ctx: RunContext, model: nn.Module, split: Split):
        """(losses [N], weight [D, C], bias [C]) of a linear probe on f0's features of
        ``split``: the fresh head's inputs, read in one counted inference pass. Fitted
        once per model and split (FLOW may ask for the losses and the head)."""
        key = (id(model), split.fingerprint())
        if getattr(self, "fitted", (None,))[0] != key:
            self.fitted = (key, self.new_probe(ctx, model, split))
        return self.fitted[1]

    def new_probe(self, ctx: RunContext, model: nn.Module, split: Split):
        features = torch.zeros(len(split), self.config.width)
        labels = torch.zeros(len(split), dtype=torch.long)
        with torch.inference_mode():
            for batch in ctx.batches(split, extra=True):
                index = batch.index.cpu()
                features[index] = body(model, batch.inputs["x"])[0].float().cpu()
                labels[index] = batch.inputs["labels"].cpu()
        classes = model.heads["new"].out_features
        return fit_probe(features, labels, classes, steps=100, l2=1e-3)


def body(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list]:
    """The shared body's output and its feature taps: the embedding, each block's."""
    hidden = model.embed(x)
    features = [hidden]
    for block in model.blocks:
        hidden = block(hidden)
        features.append(hidden)
    return hidden, features


def score(logits, labels, mine) -> tuple[torch.Tensor, ...]:
    """(loss, success, confidence, logits) of every row under one head; the rows of
    another head (not ``mine``) are scored against class 0, to be dropped."""
    loss = F.cross_entropy(logits, torch.where(mine, labels, 0), reduction="none")
    confidence, prediction = logits.softmax(-1).max(-1)
    return loss, prediction == labels, confidence, logits


def choose(mine: torch.Tensor, ours: tuple, theirs: tuple) -> tuple[torch.Tensor, ...]:
    """Rows where ``mine`` from ``ours``, the rest from ``theirs``; logits padded to
    the wider head with -inf (a class the row's head lacks)."""
    width = max(ours[3].shape[1], theirs[3].shape[1])

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, width - t.shape[1]), value=float("-inf"))

    pairs = zip(ours[:3], theirs[:3], strict=True)
    picked = [torch.where(mine, a, b) for a, b in pairs]
    return (*picked, torch.where(mine.unsqueeze(1), pad(ours[3]), pad(theirs[3])))


# -- the first dataset --------------------------------------------------------------


class ${cls}ToyTask(${cls}Task):
    metadata = TaskMetadata(
        name="$family-toy",
        family=FAMILY,
        description="toy points near class centres (replace with your dataset)",
        prior_metric="accuracy",
        new_metric="accuracy",
        offline=True,
    )

    def load_data(self, ctx: RunContext) -> TaskData:
        c = self.config
        # Both tasks read points near the same centres. The prior task names each
        # centre; the new one sorts them into fewer groups, so fine-tuning pulls the
        # centres of a group together and the prior head confuses them: forgetting.
        rng = np.random.default_rng(0)
        centres = rng.normal(scale=2.0, size=(c.prior_classes, DIM))
        groups = rng.permutation(c.prior_classes) % c.new_classes
        names = np.arange(c.prior_classes)
        n_prior = c.prior_train_size + c.prior_eval_size
        n_new = c.new_train_size + c.new_eval_size
        prior = points(centres, names, n_prior, c.noise, seed=1)
        new = points(centres, groups, n_new, c.noise, seed=2)
        return TaskData(
            *splits(prior, c.prior_train_size, "prior", first_id=0),
            *splits(new, c.new_train_size, "new", first_id=len(prior)),
            info={"prior_classes": c.prior_classes, "new_classes": c.new_classes},
        )


def points(centres, labels, count: int, noise: float, seed: int) -> list[dict]:
    """``count`` points near ``centres`` (drawn evenly), labelled ``labels[centre]``."""
    rng = np.random.default_rng(seed)
    which = rng.integers(len(centres), size=count)
    xs = centres[which] + rng.normal(scale=noise, size=(count, centres.shape[1]))
    return [
        {"x": [round(float(v), 4) for v in x], "label": int(labels[centre])}
        for x, centre in zip(xs, which, strict=True)
    ]


def splits(rows: list[dict], train_size: int, source: str, first_id: int):
    """A train and an eval split of ``rows``, ids counted from ``first_id``."""
    examples = [{"id": first_id + i, **r, "source": source} for i, r in enumerate(rows)]
    train, held_out = examples[:train_size], examples[train_size:]
    return Split(f"{source}_train", train), Split(f"{source}_eval", held_out)


@hookimpl
def forgetbench_register_tasks(register):
    register(${cls}ToyTask)
'''

TEST = '''"""Tests of the ``$family`` family.

Its parts alone, then runs of its first dataset through forgetbench's real engine and
store (seconds each on a CPU). Stage 0 trains once: every run shares one folder, so
one cache.
"""

import pytest
import torch
import torch.nn.functional as F
from forgetbench.api import run_for_test

import $module as family

TASK = family.${cls}ToyTask
# Every method forgetbench ships.
METHODS = "finetune mixcd random flow ldifs l2sp lora wise-ft lp-ft".split()
STEPS = 30


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def test_the_splits_are_whole_and_their_ids_unique():
    data = TASK().load_data(None)
    ids = [e["id"] for split in data.splits() for e in split.examples]
    assert all(len(split) > 0 for split in data.splits())
    assert len(ids) == len(set(ids))


def test_a_saved_prior_model_loads_back_the_same(tmp_path):
    task = TASK()
    bundle = task.build_prior(None, task.load_data(None))
    task.save_bundle(bundle, tmp_path)
    loaded = task.load_bundle(tmp_path).model.state_dict()
    assert loaded.keys() == bundle.model.state_dict().keys()
    for name, value in bundle.model.state_dict().items():
        assert torch.equal(loaded[name], value), name


def test_each_row_of_a_mixed_batch_is_scored_by_its_own_head():
    torch.manual_seed(0)
    task = TASK()
    data = task.load_data(None)
    bundle = task.build_prior(None, data)
    model = task.init_new_task(None, bundle, data)
    examples = [*data.prior_train.examples[:3], *data.new_train.examples[:3]]
    inputs = task.collate(bundle, examples)
    result = task.forward(model, inputs, with_features=True)
    hidden = result.features[-1]  # the last block's output: what the heads read
    for row, example in enumerate(examples):
        head = model.heads["prior" if example["source"] == "prior" else "new"]
        logits = head(hidden[row : row + 1])
        expected = F.cross_entropy(logits, torch.tensor([example["label"]]))
        # one row alone and a batch round differently: equal to float precision
        assert torch.allclose(result.loss[row], expected, atol=1e-5), row
        own = result.logits[row, : head.out_features]
        assert torch.allclose(own, logits[0], atol=1e-5)
        assert torch.isinf(result.logits[row, head.out_features :]).all()
    assert len(result.features) == len(task.layer_stack(model)) + 1


def test_a_bad_setting_is_refused():
    with pytest.raises(ValueError, match="new_classes"):
        family.Config(new_classes=1)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_on_it(method, runs):
    result = run_for_test(method, task=TASK, steps=STEPS, directory=runs)
    assert result.run["status"] == "ok"
    batch_size = result.run["config"]["train"]["batch_size"]
    assert result.compute["forwarded"] == STEPS * batch_size  # each step's whole batch
    # The default evaluate's metric: with your own evaluate, read your main metric.
    for split in ("prior", "new"):
        assert 0.0 <= result.metrics[f"{split}/after/accuracy"] <= 1.0


def test_fine_tuning_learns_the_new_task_and_forgets_some_of_the_prior(runs):
    # The toy's thresholds: set yours once your data is in.
    metrics = run_for_test("finetune", task=TASK, steps=STEPS, directory=runs).metrics
    # Stage 0 learned the prior task: f0 gets most of it right.
    assert metrics["prior/before/accuracy"] > 0.8
    assert metrics["new/after/accuracy"] > metrics["new/before/accuracy"] + 0.2
    # Some examples f0 got right are wrong after fine-tuning: forgetting to mitigate.
    assert metrics["prior/derived/cd_rate"] > 0.0
'''
