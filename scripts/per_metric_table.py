"""Per-method means of a task's runs in a results database, as a markdown table.

    python scripts/per_metric_table.py DB TASK METRIC [METRIC ...]

For each methods label (mean ± sample std over its seeds; ok runs only): each METRIC on the
prior eval set after fine-tuning, its per-part values where the task stores them
(``prior/after/<metric>_<part>``, e.g. bleu_en-de for a language pair, or
``prior/after/<metric>/<part>``, e.g. accuracy/mnist for a CLIP dataset), the new task's METRIC
after, forgetting, CD rate and rehearsal precision; then the prior main metric after per seed.
The first row is f0 (the prior model's values before fine-tuning, the same for every run of a
task).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from statistics import mean, stdev

from forgetbench.store import Store, config_labels, latest_runs


def cell(values: list[float]) -> str:
    """Mean ± std; two decimals for scores in points (BLEU), three for fractions."""
    if not values:
        return "-"
    digits = 2 if abs(mean(values)) >= 2 else 3
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{mean(values):.{digits}f} ± {stdev(values):.{digits}f}"


def main(db: str, task: str, names: list[str]) -> None:
    store = Store(db, read_only=True)
    # as the leaderboard: the latest ok run per config and seed (a rerun replaces its seed)
    runs = sorted(latest_runs(store, task), key=lambda r: (r["config_hash"], r["seed"]))
    metrics = store.get_metrics([run["id"] for run in runs])
    labels = config_labels(runs)
    by_label: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        by_label[labels[run["config_hash"]]].append({**metrics[run["id"]], "seed": run["seed"]})
    keys = []
    for name in names:
        prefixes = (f"prior/after/{name}_", f"prior/after/{name}/")
        parts = sorted({k for m in metrics.values() for k in m if k.startswith(prefixes)})
        keys += [f"prior/after/{name}", *parts, f"new/after/{name}"]
    keys += ["prior/derived/forgetting", "prior/derived/cd_rate", "run/derived/rehearsal_precision"]
    heads = [k.replace("/after/", " ").replace("/derived/", " ").replace("run ", "") for k in keys]
    print("| methods | seeds | " + " | ".join(heads) + " | prior per seed |")
    print("|---" * (len(keys) + 3) + "|")
    first = next(iter(by_label.values()))[0] if by_label else {}
    f0 = [cell([first[k.replace("/after/", "/before/")]]) if "/after/" in k else "-" for k in keys]
    print("| f0 (before) | - | " + " | ".join(f0) + " | - |")
    main_key = f"prior/after/{names[0]}"
    for label, rows in sorted(by_label.items(), key=lambda kv: -mean(r[main_key] for r in kv[1])):
        cells = [cell([r[k] for r in rows if k in r]) for k in keys]
        seeds = ", ".join(f"{r['seed']}: {cell([r[main_key]])}" for r in rows)
        print(f"| {label} | {len(rows)} | " + " | ".join(cells) + f" | {seeds} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
