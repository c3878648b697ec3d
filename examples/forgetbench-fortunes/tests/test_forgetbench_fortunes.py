"""forgetbench-fortunes' own tests: the fortune-file reader on a file written here, then the
real Debian data (skipped, saying how to get it, where ``fortunes`` is not installed)."""

import pytest
from forgetbench_fortunes import CATEGORIES, FORTUNES_DIR, FortunesTask, read_fortunes, split_new

from forgetbench.api import ForgetbenchError


def test_reader_splits_on_percent_lines_and_cleans_text(tmp_path):
    (tmp_path / "art").write_text("First\n  fortune\n%\nO_\bver_\bstruck\n%\n%\nFirst fortune\n%\n")
    (tmp_path / "food").write_text("First fortune\n%\nEat\n")
    examples = read_fortunes(tmp_path, ("art", "food"), per_category=5)
    assert [(e["text"], e["label"]) for e in examples] == [
        ("First fortune", 0),
        ("Overstruck", 0),
        ("Eat", 1),  # "First fortune" again: kept once, under the first file
    ]
    assert len({e["id"] for e in examples}) == 3


def test_missing_files_say_what_to_install(tmp_path):
    with pytest.raises(ForgetbenchError, match="apt-get install fortunes"):
        read_fortunes(tmp_path, ("art",))


@pytest.mark.skipif(not FORTUNES_DIR.is_dir(), reason="apt-get install fortunes")
def test_the_real_data_gives_every_category_a_fixed_split():
    examples = read_fortunes(per_category=200)
    counts = [sum(e["label"] == label for e in examples) for label in range(len(CATEGORIES))]
    assert min(counts) >= 100
    assert max(counts) <= 200
    train, evaluation = split_new(examples, 0.2)
    assert len(evaluation) == round(0.2 * len(examples))
    assert not {e["id"] for e in train} & {e["id"] for e in evaluation}
    assert split_new(examples, 0.2)[1].fingerprint() == evaluation.fingerprint()
    assert FortunesTask.metadata.family == "text-classification"
