"""``scripts/per_metric_table.py`` (the results pages' per-part tables): per-part columns for
both ways tasks store parts (``bleu_en-de``, ``accuracy/mnist``), f0's row, mean ± std."""

from __future__ import annotations

import runpy
from pathlib import Path

from frontier_helpers import store_run

from forgetbench.store import Metric, Store

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "per_metric_table.py"


def parts(split_values: dict[str, float], when: str) -> tuple[Metric, ...]:
    return tuple(Metric("prior", when, name, value, True) for name, value in split_values.items())


def test_the_table_has_a_column_per_part_and_f0_first(db, capsys):
    store = Store(db)
    for seed, (underscore, slash) in enumerate(((0.6, 0.2), (0.8, 0.4))):
        extra = parts({"accuracy_a": underscore, "accuracy/b": slash}, "after")
        extra += parts({"accuracy_a": 0.9, "accuracy/b": 0.7}, "before")
        store_run(store, "mixcd", "mixcd", seed, 0.5, 0.7 + 0.1 * seed, extra=extra)
    main = runpy.run_path(str(SCRIPT))["main"]
    main(db, "toy", ["accuracy"])
    lines = capsys.readouterr().out.splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[:6] == ["methods", "seeds", "prior accuracy", "prior accuracy/b",
                          "prior accuracy_a", "new accuracy"]  # fmt: skip
    f0 = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert f0[:6] == ["f0 (before)", "-", "0.800", "0.700", "0.900", "0.100"]
    row = [cell.strip() for cell in lines[3].strip("|").split("|")]
    assert row[:6] == ["mixcd", "2", "0.500 ± 0.000", "0.300 ± 0.141", "0.700 ± 0.141",
                       "0.750 ± 0.071"]  # fmt: skip
    assert row[-1] == "0: 0.500, 1: 0.500"
