"""Translation metrics from sacrebleu: corpus BLEU and chrF (with their signature strings) and
sentence chrF, the per-example score behind the collateral-damage rate.

Scores are sacrebleu's, on its 0-100 scale, at its defaults: BLEU with exponential smoothing,
mixed case and the tokenizer sacrebleu chooses for the target language (``trg_lang``: 13a,
except ``zh`` for Chinese and MeCab for Japanese and Korean, which need ``sacrebleu[ja]`` /
``sacrebleu[ko]``); chrF with character 6-grams, beta 2, no word n-grams.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence

import numpy as np
from sacrebleu.metrics import BLEU, CHRF

from forgetbench.api import ForgetbenchError


def pair_target(pair: str) -> str:
    """The target language of a pair named ``<source>-<target>`` (``en-de``: ``de``)."""
    return pair.rpartition("-")[2]


def bleu(target_language: str = "") -> BLEU:
    """sacrebleu's BLEU for references in ``target_language`` (ISO 639-1; its tokenizer: 13a
    splits no Chinese, Japanese or Korean words, whose BLEU would be near 0 with it)."""
    noise = io.StringIO()  # sacrebleu prints its own advice before raising
    try:
        with contextlib.redirect_stderr(noise), contextlib.redirect_stdout(noise):
            return BLEU(trg_lang=target_language)
    except (ImportError, RuntimeError):
        raise ForgetbenchError(
            f"BLEU for target language {target_language!r} needs sacrebleu's tokenizer for it:"
            f" pip install 'sacrebleu[{target_language}]'"
        ) from None


def signatures(target_languages: Iterable[str] = ()) -> dict[str, str]:
    """The sacrebleu signature strings of the corpus metrics (what makes a score comparable),
    for one reference per segment (sacrebleu fills in the count once a metric has scored):
    ``bleu`` and ``chrf``, and ``bleu_<language>`` for each of ``target_languages`` whose BLEU
    tokenizer is not the default one (a missing tokenizer is an error here, at data load)."""
    found = {}
    for name, metric in (("bleu", BLEU()), ("chrf", CHRF())):
        metric.corpus_score(["-"], [["-"]])
        found[name] = str(metric.get_signature())
    for language in sorted(set(target_languages)):
        metric = bleu(language)
        metric.corpus_score(["-"], [["-"]])
        if str(metric.get_signature()) != found["bleu"]:
            found[f"bleu_{language}"] = str(metric.get_signature())
    return found


def corpus_scores(
    hypotheses: Sequence[str], references: Sequence[str], target_language: str = ""
) -> dict[str, float]:
    """Corpus BLEU and chrF of one language pair (one reference per segment)."""
    refs = [list(references)]
    return {
        "bleu": float(bleu(target_language).corpus_score(list(hypotheses), refs).score),
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
        scores = corpus_scores(
            [hypotheses[i] for i in rows], [references[i] for i in rows], pair_target(pair)
        )
        metrics.update({f"{name}_{pair}": value for name, value in scores.items()})
    for name in ("bleu", "chrf"):
        metrics[name] = float(np.mean([metrics[f"{name}_{pair}"] for pair in names]))
    return metrics
