"""Metrics against hand-worked cases (official HotpotQA/SQuAD normalisation and F1)."""

import pytest

from promptlab import metrics as M


def test_normalize_answer_drops_case_punctuation_articles_and_spaces():
    assert M.normalize_answer("  The Quick,  Brown fox! ") == "quick brown fox"
    assert M.normalize_answer("An apple a day") == "apple day"
    # articles only as whole words: 'theatre' keeps its 'the'
    assert M.normalize_answer("Theatre an") == "theatre"


def test_exact_match_normalises_and_takes_max_over_golds():
    assert M.exact_match("the Eiffel Tower.", ["Eiffel tower"]) == 1.0
    assert M.exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    assert M.exact_match("obama", ["Barack Obama", "Obama"]) == 1.0


def test_f1_partial_overlap_by_hand():
    # pred "barack obama jr" vs gold "obama": common 1, P = 1/3, R = 1, F1 = 2*(1/3)*1/(1/3+1) = 0.5
    assert M.f1("Barack Obama Jr.", ["Obama"]) == pytest.approx(0.5)
    # "in new york city" vs "new york" ("in" is not an article): common 2, P = 2/4, R = 2/2, F1 = 2/3
    assert M.f1("in New York City", ["New York"]) == pytest.approx(2 / 3)
    # repeated tokens count once per match: "the the paris" -> "paris"; vs "paris france": P = 1, R = 1/2
    assert M.f1("the the Paris", ["Paris, France"]) == pytest.approx(2 / 3)
    assert M.f1("London", ["Paris"]) == 0.0


def test_f1_yes_no_special_case():
    # "yes it is" shares "yes" with the gold, but the official script gives 0 for yes/no/noanswer mismatches
    assert M.f1("yes it is", ["yes"]) == 0.0
    assert M.f1("yes", ["yes sir"]) == 0.0
    assert M.f1("noanswer", ["no answer"]) == 0.0
    assert M.f1("No.", ["no"]) == 1.0
    assert M.exact_match("Yes", ["yes"]) == 1.0


def test_f1_max_over_golds():
    # vs "barack obama": P = 1, R = 1/2 -> 2/3; vs "obama": 1.0
    assert M.f1("Obama", ["Barack Obama", "Obama"]) == 1.0
    assert M.f1("Obama", ["Barack Obama"]) == pytest.approx(2 / 3)


def test_accuracy():
    assert M.accuracy([0, 1, 2, 1], [0, 1, 1, 1]) == 0.75
    with pytest.raises(ValueError, match="3 predictions but 2"):
        M.accuracy([0, 1, 2], [0, 1])


def test_macro_f1_small_confusion_by_hand():
    golds = [0, 0, 0, 1, 1, 2]
    preds = [0, 0, 1, 1, 2, 2]
    # class 0: tp 2, fp 0, fn 1 -> 4/5; class 1: tp 1, fp 1, fn 1 -> 2/4; class 2: tp 1, fp 1, fn 0 -> 2/3
    assert M.macro_f1(preds, golds, 3) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert M.macro_f1(golds, golds, 3) == 1.0
    with pytest.raises(ValueError, match="outside"):
        M.macro_f1([0, 3], [0, 1], 3)


def test_compute_dispatches_by_name_and_rejects_unknown():
    out = M.compute(["em", "f1"], ["the Obama", "Paris"], [["Barack Obama", "Obama"], "London"])
    assert out == {"em": 0.5, "f1": 0.5}
    labels = M.compute(["accuracy", "macro_f1"], [0, 1, 1], [0, 1, 0], n_labels=2)
    assert labels["accuracy"] == pytest.approx(2 / 3)
    # class 0: tp 1, fn 1 -> 2/3; class 1: tp 1, fp 1 -> 2/3
    assert labels["macro_f1"] == pytest.approx(2 / 3)
    assert all(0.0 <= v <= 1.0 for v in (*out.values(), *labels.values()))
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        M.compute(["bleu"], ["a"], ["a"])
    assert M.score_one("f1", "Barack Obama Jr.", "Obama") == pytest.approx(0.5)


def test_bootstrap_ci_contains_mean_narrows_with_more_examples_and_is_seeded():
    small = [1.0, 0.0, 1.0, 1.0, 0.0] * 20  # mean 0.6, 100 examples
    large = small * 25  # same mean, 2,500 examples
    lo, hi = M.bootstrap_ci(small)
    assert lo < 0.6 < hi
    lo2, hi2 = M.bootstrap_ci(large)
    assert lo2 < 0.6 < hi2
    # width shrinks like 1/sqrt(m): 5x here; allow slack for resampling noise
    assert (hi2 - lo2) < (hi - lo) / 3
    assert M.bootstrap_ci(small, seed=1) == M.bootstrap_ci(small, seed=1)
    assert M.bootstrap_ci([0.7] * 10) == pytest.approx((0.7, 0.7))
    with pytest.raises(ValueError):
        M.bootstrap_ci([])
