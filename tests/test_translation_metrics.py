"""sacrebleu conformance: the family's metrics on cases checked by hand."""

import math

import numpy as np
import pytest

from forgetbench.errors import ForgetbenchError
from forgetbench_tasks.translation.metrics import (
    corpus_scores,
    pair_metrics,
    sentence_chrf,
    signatures,
)


def test_bleu_matches_a_hand_computed_case():
    # hypothesis "the cat sat on the mat", reference "the cat sat on a mat" (13a tokens):
    # clipped n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths, so no brevity penalty.
    expected = 100 * math.exp(np.mean(np.log([5 / 6, 3 / 5, 2 / 4, 1 / 3])))
    scores = corpus_scores(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert scores["bleu"] == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(53.7284, abs=1e-4)


def test_bleu_brevity_penalty_by_hand():
    # a 4-token hypothesis that is a prefix of a 6-token reference: every precision is 1,
    # BP = exp(1 - 6/4)
    scores = corpus_scores(["a b c d"], ["a b c d e f"])
    assert scores["bleu"] == pytest.approx(100 * math.exp(1 - 6 / 4), abs=1e-6)


def test_chrf_by_hand_on_a_single_character_pair():
    # "ab" vs "ac" (no spaces): character 1-grams match 1 of 2 (P = R = 1/2), 2-grams 0 of 1;
    # orders 3-6 are empty on both sides and sacrebleu leaves them out (effective order).
    # chrF2 averages P and R over the orders that exist: P = R = 1/4 -> F = 1/4.
    assert corpus_scores(["ab"], ["ac"])["chrf"] == pytest.approx(25.0, abs=1e-6)
    assert sentence_chrf(["ab"], ["ac"])[0] == pytest.approx(25.0, abs=1e-6)


def test_identical_and_disjoint_translations_score_the_extremes():
    # (corpus BLEU needs 4-grams somewhere in the corpus: a 2-word corpus scores 0 even when
    # identical, one reason success is judged by sentence chrF)
    assert corpus_scores(["Datei öffnen"], ["Datei öffnen"])["bleu"] == 0.0
    same = corpus_scores(["Die Datei wurde nicht gefunden"], ["Die Datei wurde nicht gefunden"])
    assert same == {"bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0)}
    other = corpus_scores(["xyz"], ["Datei öffnen"])
    assert other == {"bleu": pytest.approx(0.0), "chrf": pytest.approx(0.0)}


def test_pair_metrics_score_each_pair_alone_and_average_pairs_equally():
    pairs = ["en-de", "en-de", "en-de", "en-fr"]
    german = [
        "Die Datei wurde nicht gefunden",
        "Das Verzeichnis ist leer",
        "Beenden Sie das Programm",
    ]
    hypotheses = [*german, "zzz"]
    references = [*german, "Ouvrir le fichier"]
    metrics = pair_metrics(pairs, hypotheses, references)
    assert metrics["bleu_en-de"] == pytest.approx(100.0)
    assert metrics["chrf_en-fr"] == pytest.approx(0.0)
    # unweighted over pairs (a 3-example pair and a 1-example pair count the same)
    assert metrics["chrf"] == pytest.approx(50.0)
    assert metrics["bleu"] == pytest.approx(50.0)


def test_signatures_name_the_settings_and_version():
    import sacrebleu

    found = signatures()
    assert found["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
    assert "nc:6|nw:0" in found["chrf"]
    assert found["bleu"].endswith(f"version:{sacrebleu.__version__}")


def test_bleu_tokenizes_by_target_language():
    """Chinese has no spaces: with 13a a one-character slip leaves no 4-gram, and the pair's
    BLEU would be 0; with sacrebleu's zh tokenizer (chosen for a ``*-zh`` pair) each character
    is a token, and so is its signature."""
    hypotheses, references = (
        ["我喜欢吃苹果和香蕉", "今天天气很好"],
        ["我喜欢吃苹果和橘子", "今天天气很好"],
    )
    chinese = pair_metrics(["en-zh", "en-zh"], hypotheses, references)
    assert chinese["bleu_en-zh"] > 50
    assert corpus_scores(hypotheses, references)["bleu"] < 1  # 13a: each sentence one word
    found = signatures(["de", "zh"])
    assert "tok:13a" in found["bleu"]
    assert "tok:zh" in found["bleu_zh"]
    assert "bleu_de" not in found  # 13a, the default: one signature
    assert signatures(["de", "fr", "es"]) == signatures()


def test_a_target_language_whose_tokenizer_is_missing_is_one_clear_error():
    import importlib.util

    if importlib.util.find_spec("MeCab") is not None:
        pytest.skip("MeCab is installed here")
    with pytest.raises(ForgetbenchError, match=r"pip install 'sacrebleu\[ja\]'"):
        signatures(["ja"])
