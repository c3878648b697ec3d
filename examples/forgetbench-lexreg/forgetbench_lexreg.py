"""The ``lexreg`` task family: regression from a text to a number, as a forgetbench plugin.

Written from ``forgetbench new-plugin family lexreg``, the skeleton's toy replaced step by step
(forgetbench's docs/tasks.md, "Adding a family"). What it shows beside the classification
families:

- a continuous target: the loss is the squared error of the standardised target; the main
  metric is ``mse`` in the target's own units, lower is better (``TaskMetadata.lower_is_better``),
  from the family's own ``evaluate``;
- a success rule for a continuous metric: the prediction within ``task.tolerance`` of the
  target, in its units. It is a setting, not a field of the examples, so changing it keeps the
  data's fingerprint and stage 0;
- no predictive distribution: ``PerSample.logits`` is None, and ``confidence`` is a constant (a
  point regressor has no label-free certainty), so mix-cd partitions by the task's own schemes;
- a scalar fresh head: FLOW's reference losses and LP-FT's starting head come from a
  closed-form ridge probe on f0's features (``fit_probe`` fits classes).

Its first dataset, ``lexreg-depth``: WordNet 3.0 synsets (Debian ``wordnet-base``), lemmas and
gloss -> depth in the hypernym taxonomy; nouns are the prior task, verbs the new one.
"""

from __future__ import annotations

import dataclasses
import json
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from forgetbench.api import (
    EvalResult,
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
    hash_dir,
    hash_json,
    hookimpl,
    split_indices,
)

FAMILY = "lexreg"
WORDNET = Path("/usr/share/wordnet")
SIZES = ("prior_train_size", "prior_eval_size", "new_train_size", "new_eval_size")


@dataclasses.dataclass
class Config:
    """Settings, given with ``--set task.<field>=<value>``: the data's, then the
    model's."""

    prior_train_size: int = 20000
    prior_eval_size: int = 2000
    new_train_size: int = 3000
    new_eval_size: int = 1000
    tolerance: float = dataclasses.field(
        default=1.0,
        metadata={"help": "a prediction within this many levels of the depth is a success"},
    )
    buckets: int = dataclasses.field(
        default=4096, metadata={"help": "hashed bag-of-words input width"}
    )
    width: int = dataclasses.field(default=64, metadata={"help": "hidden width"})
    depth: int = dataclasses.field(default=2, metadata={"help": "residual blocks"})
    stage0_steps: int = dataclasses.field(
        default=2500, metadata={"help": "steps that train the prior model"}
    )

    def __post_init__(self):
        for size in SIZES:
            value = getattr(self, size)
            check(value >= 1, f"{size} must be >= 1, got {value}")
        check(self.tolerance > 0, f"tolerance must be > 0, got {self.tolerance}")
        check(self.buckets >= 16, f"buckets must be >= 16, got {self.buckets}")
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


class LexregModel(nn.Module):
    """A body the tasks share and a scalar regression head per task (``prior``,
    then ``new``)."""

    def __init__(self, buckets: int, width: int, depth: int, heads: Sequence[str]):
        super().__init__()
        self.embed = nn.Linear(buckets, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.heads = nn.ModuleDict({k: nn.Linear(width, 1) for k in heads})


TOKEN = re.compile(r"[a-z]+")


def bag_of_words(texts: Sequence[str], buckets: int) -> torch.Tensor:
    """Hashed bag of words, each row scaled to unit-ish norm (1/sqrt(tokens))."""
    x = torch.zeros(len(texts), buckets)
    for row, text in enumerate(texts):
        tokens = TOKEN.findall(text.lower())
        for token in tokens:
            x[row, zlib.crc32(token.encode()) % buckets] += 1.0
        x[row] /= max(1, len(tokens)) ** 0.5
    return x


# -- the family ---------------------------------------------------------------------


class LexregTask(Task):
    """Regression from a text to a scalar. An example is ``{"id", "text", "y"`` (the
    standardised target), ``"scale"`` (the target's standard deviation: ``y * scale`` is in
    the target's own units), ``"source"}``. Loss: squared error in y's units; success:
    ``|prediction - y| * scale <= tolerance``; metrics: ``mse`` and ``mae`` in the target's
    units (lower is better) and ``within`` (the share of successes)."""

    Config = Config
    train_defaults: ClassVar[dict[str, Any]] = {"steps": 200, "lr": 1e-2}

    # -- the prior model: built, trained by the core (stage 0), cached, loaded -------

    def architecture(self) -> dict[str, Any]:
        c = self.config
        return {"family": FAMILY, "buckets": c.buckets, "width": c.width, "depth": c.depth}

    def new_model(self, heads: Sequence[str]) -> nn.Module:
        c = self.config
        return LexregModel(c.buckets, c.width, c.depth, heads)

    def build_prior(self, ctx: RunContext, data: TaskData) -> ModelBundle:
        model = self.new_model(["prior"])
        return ModelBundle(model, None, hash_json(self.architecture()), source=FAMILY)

    @property
    def stage0(self) -> Stage0Spec:
        train = TrainConfig(steps=self.config.stage0_steps, batch_size=32, lr=3e-3)
        base = hash_json(self.architecture())  # no pretrained weights: a config hash
        return Stage0Spec(train=train, base=base, key=self.architecture())

    def save_bundle(self, bundle: ModelBundle, directory: Path) -> None:
        state = dict(bundle.model.state_dict())
        save_file(state, str(directory / "model.safetensors"))
        written = {"architecture": self.architecture(), "heads": list(bundle.model.heads)}
        (directory / "bundle.json").write_text(json.dumps(written))

    def load_bundle(self, directory: Path) -> ModelBundle:
        written = json.loads((directory / "bundle.json").read_text())
        if written.get("architecture") != self.architecture():
            raise ForgetbenchError(f"{directory} holds another architecture: {written}")
        model = self.new_model(written["heads"])
        model.load_state_dict(load_file(str(directory / "model.safetensors")))
        return ModelBundle(model, None, hash_dir(directory), f"prior-model:{directory}")

    def init_new_task(self, ctx: RunContext, bundle: ModelBundle, data: TaskData) -> nn.Module:
        bundle.model.heads["new"] = nn.Linear(self.config.width, 1)
        return bundle.model

    # -- one step --------------------------------------------------------------------

    def collate(self, bundle: ModelBundle, examples: Sequence[dict[str, Any]]) -> dict:
        return {
            "x": bag_of_words([e["text"] for e in examples], self.config.buckets),
            "y": torch.tensor([e["y"] for e in examples], dtype=torch.float32),
            "scale": torch.tensor([e["scale"] for e in examples], dtype=torch.float32),
            "prior_head": torch.tensor([e["source"] == "prior" for e in examples]),
        }

    def forward(self, model, inputs, with_features: bool = False) -> PerSample:
        hidden, features = body(model, inputs["x"])
        prior = inputs["prior_head"]
        if "new" not in model.heads and not bool(prior.all()):  # before init_new_task
            raise ForgetbenchError("new-task rows, but the model has no new head yet")
        prediction = None
        for name, head in model.heads.items():
            mine = prior if name == "prior" else ~prior
            out = head(hidden).float().squeeze(-1)
            prediction = out if prediction is None else torch.where(mine, out, prediction)
        error = prediction - inputs["y"]
        loss = error.pow(2)
        # Success: within ``tolerance`` of the target, in the target's own units.
        success = error.abs() * inputs["scale"] <= self.config.tolerance
        # A point regressor has no certainty of its own; one computed from the error would
        # read the label and copy success into mix-cd's confidence bins.
        confidence = torch.ones_like(loss.detach())
        taps = features if with_features else None
        return PerSample(loss, success, confidence, taps, None)

    def evaluate(self, ctx: RunContext, model, split: Split) -> EvalResult:
        losses, successes, scales = [], [], []
        for batch in ctx.batches(split):
            out = ctx.forward(model, batch)
            losses.append(out.loss.float().cpu())
            successes.append(out.success.cpu())
            scales.append(batch.inputs["scale"].float().cpu())
        loss, success, scale = (torch.cat(t) for t in (losses, successes, scales))
        metrics = {
            "mse": float((loss * scale**2).mean()),
            "mae": float((loss.sqrt() * scale).mean()),
            "within": float(success.float().mean()),
            "loss": float(loss.mean()),
        }
        return EvalResult(metrics, success.numpy().astype(bool), (-loss).numpy())

    # -- what methods read -----------------------------------------------------------

    def feature_taps(self) -> str:
        return "the bag-of-words embedding and the output of each residual block"

    def lora_target_modules(self, model: nn.Module) -> list[str]:
        return ["fc1", "fc2"]

    def layer_stack(self, model: nn.Module) -> list[nn.Module]:
        return list(model.blocks)

    def partitions(self, data: TaskData) -> dict[str, np.ndarray]:
        split = data.prior_train
        return {
            "level": np.clip(split.column("level"), 0, 15).astype(np.int64),
            "lexfile": split.column("lexfile").astype(np.int64),
        }

    def reference_losses(self, ctx, model, split) -> torch.Tensor:
        """FLOW's reference: each example's squared error under a ridge probe on f0's
        features (f0's new head is fresh)."""
        return self.probe(ctx, model, split)[0]

    def reference_head(self, ctx, model, split) -> dict[str, torch.Tensor]:
        _, weight, bias = self.probe(ctx, model, split)
        return {"heads.new.weight": weight.unsqueeze(0), "heads.new.bias": bias.reshape(1)}

    def probe(self, ctx: RunContext, model: nn.Module, split: Split):
        key = (id(model), split.fingerprint())
        if getattr(self, "fitted", (None,))[0] != key:
            self.fitted = (key, self.new_probe(ctx, model, split))
        return self.fitted[1]

    def new_probe(self, ctx: RunContext, model: nn.Module, split: Split, l2=1e-2):
        """Ridge regression (closed form) on f0's features: forgetbench's ``fit_probe``
        is a multinomial logistic regression, of no use for a scalar target."""
        features = torch.zeros(len(split), self.config.width)
        targets = torch.zeros(len(split))
        with torch.inference_mode():
            for batch in ctx.batches(split, extra=True):
                index = batch.index.cpu()
                features[index] = body(model, batch.inputs["x"])[0].float().cpu()
                targets[index] = batch.inputs["y"].float().cpu()
        x = torch.cat([features, torch.ones(len(split), 1)], dim=1).double()
        gram = x.T @ x + l2 * len(split) * torch.eye(x.shape[1], dtype=torch.float64)
        gram[-1, -1] -= l2 * len(split)  # the bias is not penalised
        solution = torch.linalg.solve(gram, x.T @ targets.double())
        losses = (x @ solution - targets.double()).pow(2).float()
        return losses, solution[:-1].float(), solution[-1].float()


def body(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list]:
    """The shared body's output and its feature taps: the embedding, each block's."""
    hidden = model.embed(x)
    features = [hidden]
    for block in model.blocks:
        hidden = block(hidden)
        features.append(hidden)
    return hidden, features


# -- the first dataset: WordNet taxonomy depth --------------------------------------


def read_synsets(pos: str) -> dict[str, dict]:
    """WordNet 3.0's ``data.<pos>``: each synset's lemmas, gloss (without the
    quoted examples), lexicographer file and hypernyms (``@``, ``@i``)."""
    path = WORDNET / f"data.{pos}"
    if not path.is_file():
        raise ForgetbenchError(f"{path} not found: apt-get install wordnet-base")
    synsets = {}
    for line in path.open(encoding="latin-1"):
        if line.startswith("  "):  # the licence header
            continue
        head, gloss = line.split(" | ", 1)
        fields = head.split()
        words = int(fields[3], 16)
        lemmas = [w.replace("_", " ") for w in fields[4 : 4 + 2 * words : 2]]
        i = 4 + 2 * words
        pointers = int(fields[i])
        i += 1
        hypernyms = []
        for _ in range(pointers):
            symbol, offset, target_pos = fields[i], fields[i + 1], fields[i + 2]
            i += 4
            if symbol in ("@", "@i") and target_pos == pos[0]:
                hypernyms.append(offset)
        synsets[fields[0]] = {
            "lemmas": lemmas,
            "gloss": gloss.split('; "')[0].strip(),
            "lexfile": int(fields[1]),
            "hypernyms": hypernyms,
        }
    return synsets


def depths(synsets: dict[str, dict]) -> dict[str, int]:
    """Shortest hypernym path to a root, per synset."""
    depth: dict[str, int] = {}

    def walk(offset: str) -> int:
        if offset not in depth:
            depth[offset] = 0  # guards a cycle
            parents = synsets[offset]["hypernyms"]
            depth[offset] = 1 + min(map(walk, parents)) if parents else 0
        return depth[offset]

    for offset in synsets:
        walk(offset)
    return depth


class LexregWordnetDepthTask(LexregTask):
    metadata = TaskMetadata(
        name="lexreg-depth",
        family=FAMILY,
        description=(
            "regression on WordNet 3.0: lemmas + gloss -> taxonomy depth, nouns "
            "(prior) then verbs (new); hashed bag of words, residual MLP"
        ),
        prior_metric="mse",
        new_metric="mse",
        lower_is_better=frozenset({"mse", "mae", "loss"}),
        offline=True,
    )

    def load_data(self, ctx: RunContext) -> TaskData:
        c = self.config
        prior = self.examples("noun", c.prior_train_size, c.prior_eval_size, 0)
        new = self.examples("verb", c.new_train_size, c.new_eval_size, 10**8)
        return TaskData(*prior, *new, info={"prior": "noun depth", "new": "verb depth"})

    def examples(self, pos: str, train_size: int, eval_size: int, first_id: int):
        synsets = read_synsets(pos)
        depth = depths(synsets)
        offsets = sorted(synsets)
        source = "prior" if pos == "noun" else "new"
        train, held_out = split_indices(len(offsets), eval_size, train_size, seed=0)
        levels = np.array([depth[offsets[i]] for i in train], dtype=np.float64)
        mean, std = float(levels.mean()), float(levels.std())

        def example(i: int) -> dict:
            s = synsets[offsets[i]]
            level = depth[offsets[i]]
            return {
                "id": first_id + int(offsets[i]),
                "text": f"{', '.join(s['lemmas'])}: {s['gloss']}",
                "level": level,
                "lexfile": s["lexfile"],
                "y": round((level - mean) / std, 6),
                "scale": round(std, 6),
                "source": source,
            }

        return (
            Split(f"{source}_train", [example(i) for i in train]),
            Split(f"{source}_eval", [example(i) for i in held_out]),
        )


@hookimpl
def forgetbench_register_tasks(register):
    register(LexregWordnetDepthTask)
