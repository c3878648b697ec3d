"""SQuAD metrics, span search and the per-sample loss of the QA family, on hand-made inputs."""

import math

import numpy as np
import pytest
import torch

from forgetbench_tasks.qa.base import (
    answer_bins,
    answer_token_span,
    best_spans,
    category_bins,
    mask_logits,
    span_loss,
    squad_scores,
)


def test_f1_and_exact_match_by_hand():
    # "the cat sat" normalises to "cat sat" (articles go): 2 shared tokens,
    # precision 2/2, recall 2/3, F1 = 2 * 1 * (2/3) / (1 + 2/3) = 0.8.
    exact, f1, total = squad_scores(["the cat sat"], [["cat sat on"]])
    assert exact.tolist() == [0.0]
    assert f1[0] == pytest.approx(0.8)
    assert total == pytest.approx({"exact_match": 0.0, "f1": 0.8})


def test_scores_take_the_best_reference_and_normalise():
    predictions = ["The Cat!", "a dog", "sat on the mat", ""]
    references = [["cat"], ["cat", "dog"], ["on the mat"], ["cat"]]
    exact, f1, total = squad_scores(predictions, references)
    assert exact.tolist() == [1.0, 1.0, 0.0, 0.0]
    # "sat on mat" vs "on mat": precision 2/3, recall 1, F1 = 0.8
    assert f1 == pytest.approx([1.0, 1.0, 0.8, 0.0])
    assert total["exact_match"] == pytest.approx(0.5)
    assert total["f1"] == pytest.approx(np.mean([1.0, 1.0, 0.8, 0.0]))


def test_answer_token_span_inside_and_outside_a_window():
    # [CLS] q [SEP] tok0 tok1 tok2 [SEP]; context tokens cover chars 0-3, 4-7, 8-11
    offsets = [(0, 0), (0, 1), (0, 0), (0, 3), (4, 7), (8, 11), (0, 0)]
    sequence_ids = [None, 0, None, 1, 1, 1, None]
    assert answer_token_span(offsets, sequence_ids, 4, 11) == (4, 5)
    assert answer_token_span(offsets, sequence_ids, 0, 3) == (3, 3)
    assert answer_token_span(offsets, sequence_ids, 8, 14) is None  # runs past the window
    assert answer_token_span(offsets, [None, 0, None, None, None, None, None], 0, 3) is None


def test_best_span_respects_order_length_and_validity():
    start = torch.tensor([[0.0, 5.0, 1.0, 0.0, 9.0], [0.0, 1.0, 2.0, 3.0, 9.0]])
    end = torch.tensor([[0.0, 0.0, 4.0, 6.0, 0.0], [9.0, 0.0, 0.0, 0.0, 1.0]])
    valid = torch.tensor([[False, True, True, True, False], [True] * 5])
    score, first, last = best_spans(start, end, valid, max_tokens=3)
    # window 0: token 4 is invalid, so (1, 3): 5 + 6; window 1: (4, 0) would score 18, but an
    # end cannot precede its start: (4, 4) scores 10, (0, 0) 9
    assert (first.tolist(), last.tolist()) == ([1, 4], [3, 4])
    assert score.tolist() == [11.0, 10.0]
    _, first, last = best_spans(start, end, valid, max_tokens=2)
    assert (first[0].item(), last[0].item()) == (1, 2)  # (1, 3) is 3 tokens long


def test_a_window_without_context_scores_minus_infinity():
    score, _, _ = best_spans(torch.zeros(1, 4), torch.zeros(1, 4), torch.zeros(1, 4, dtype=bool), 2)
    assert score.item() == -math.inf


def test_span_loss_is_the_mean_of_start_and_end_cross_entropy():
    start = torch.tensor([[2.0, 0.0, 0.0]])
    end = torch.tensor([[0.0, 0.0, 3.0]])
    loss = span_loss(start, end, torch.tensor([0]), torch.tensor([2]))
    expected = (
        -math.log(math.exp(2) / (math.exp(2) + 2)) - math.log(math.exp(3) / (math.exp(3) + 2))
    ) / 2
    assert loss.item() == pytest.approx(expected)


def test_masked_positions_take_no_probability():
    logits = torch.tensor([[1.0, 2.0, 50.0]])
    masked = mask_logits(logits, torch.tensor([[1, 1, 0]]))
    assert masked.softmax(-1)[0, 2].item() == 0.0
    loss_masked = span_loss(masked, masked, torch.tensor([1]), torch.tensor([1]))
    loss_short = span_loss(logits[:, :2], logits[:, :2], torch.tensor([1]), torch.tensor([1]))
    assert loss_masked.item() == pytest.approx(loss_short.item())


def test_bins():
    examples = [
        {"answers": {"text": [t]}} for t in ("one", "two words", "a b c d", "a b c d e f g h")
    ]
    assert answer_bins(examples).tolist() == [0, 1, 2, 3]
    assert category_bins(["what", "who", "what"]).tolist() == [0, 1, 0]


def test_f1_is_the_v1_1_one_for_a_prediction_normalised_to_nothing():
    """SQuAD v1.1's script: no token in common is F1 0, even against a gold answer that also
    normalises to nothing ("A"); exact match compares the two empty strings and is 1. The
    totals are float64 means of the per-example scores."""
    exact, f1, total = squad_scores(["the", "a", "amp"], [["amp", "A"], ["x"], ["amp", "A"]])
    assert exact.tolist() == [1.0, 0.0, 1.0]
    assert f1.tolist() == [0.0, 0.0, 1.0]
    assert total == {"exact_match": 2 / 3, "f1": 1 / 3}
    many = squad_scores(["cat sat on"] * 3000, [["the cat sat"]] * 3000)
    assert many[2]["f1"] == float(np.mean(many[1]))
