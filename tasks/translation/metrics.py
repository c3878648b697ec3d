"""Translation metrics from sacrebleu: corpus BLEU and chrF (with their signature strings) and
sentence chrF, the per-example score behind the collateral-damage rate.

Scores are sacrebleu's, on its 0-100 scale. Defaults throughout: BLEU with the 13a tokenizer,
exponential smoothing, mixed case; chrF with character 6-grams, beta 2, no word n-grams.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sacrebleu.metrics import BLEU, CHRF


def signatures() -> dict[str, str]:
    """The sacrebleu signature strings of the corpus metrics (what makes a score comparable),
    for one reference per segment (sacrebleu fills in the count once a metric has scored)."""
    found = {}
    for name, metric in (("bleu", BLEU()), ("chrf", CHRF())):
        metric.corpus_score(["-"], [["-"]])
        found[name] = str(metric.get_signature())
    return found


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU and chrF of one language pair (one reference per segment)."""
    refs = [list(references)]
    return {
        "bleu": float(BLEU().corpus_score(list(hypotheses), refs).score),
        "chrf": float(CHRF().corpus_score(list(hypotheses), refs).score),
    }


def sentence_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """chrF of every segment on its own [N] (0-100)."""
    chrf = CHRF()
    return np.asarray(
        [chrf.sentence_score(h, [r]).score for h, r in zip(hypotheses, references, strict=True)],
        dtype=np.float64,
    )


def pair_metrics(
    pairs: Sequence[str], hypotheses: Sequence[str], references: Sequence[str]
) -> dict[str, float]:
    """``bleu_<pair>`` and ``chrf_<pair>`` per language pair, and ``bleu`` / ``chrf``: their
    unweighted means over the pairs (each pair counts once, whatever its size)."""
    metrics: dict[str, float] = {}
    names = sorted(set(pairs))
    for pair in names:
        rows = [i for i, p in enumerate(pairs) if p == pair]
        scores = corpus_scores([hypotheses[i] for i in rows], [references[i] for i in rows])
        metrics.update({f"{name}_{pair}": value for name, value in scores.items()})
    for name in ("bleu", "chrf"):
        metrics[name] = float(np.mean([metrics[f"{name}_{pair}"] for pair in names]))
    return metrics
