"""MNER (seqeval, entity level) and MRE (None-negative micro) metrics against hand counts."""

from __future__ import annotations

import pytest

from promu_lib.metrics import ner_scores, re_scores


def test_ner_micro_and_per_type_hand_computed():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-MISC", "I-MISC"]]
    # PER right; LOC typed as ORG (wrong); ORG right; MISC span cut short (wrong)
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "B-MISC", "O"]]
    s = ner_scores(gold, pred)
    # 2 correct of 4 predicted, 4 gold
    assert s["precision"] == pytest.approx(50.0)
    assert s["recall"] == pytest.approx(50.0)
    assert s["f1"] == pytest.approx(50.0)
    pt = s["per_type"]
    assert pt["PER"] == {"p": 100.0, "r": 100.0, "f1": 100.0, "support": 1}
    assert pt["LOC"]["support"] == 1 and pt["LOC"]["r"] == 0.0 and pt["LOC"]["p"] == 0.0
    # ORG: 1 correct, 2 predicted, 1 gold
    assert pt["ORG"]["p"] == pytest.approx(50.0)
    assert pt["ORG"]["r"] == pytest.approx(100.0)
    assert pt["ORG"]["f1"] == pytest.approx(200 / 3)
    assert pt["MISC"]["f1"] == 0.0


def test_ner_non_strict_mode_accepts_i_start():
    # default (CoNLL) mode reads a leading I- as the start of an entity
    s = ner_scores([["B-PER", "I-PER"]], [["I-PER", "I-PER"]])
    assert s["f1"] == pytest.approx(100.0)


def test_ner_no_predictions_is_zero_not_nan():
    s = ner_scores([["B-PER", "O"]], [["O", "O"]])
    assert s["precision"] == 0.0 and s["recall"] == 0.0 and s["f1"] == 0.0


def test_ner_length_mismatch_raises():
    with pytest.raises(ValueError, match="sequence 0"):
        ner_scores([["O", "O"]], [["O"]])


def test_re_micro_none_negative_hand_computed():
    gold = ["None", "/per/per/parent", "/per/per/parent", "/per/org/member_of", "None"]
    pred = ["/per/per/parent", "/per/per/parent", "None", "/per/org/member_of", "None"]
    s = re_scores(gold, pred)
    # correct non-None: 2; predicted non-None: 3; gold non-None: 3
    assert s["correct"] == 2 and s["n_pred"] == 3 and s["n_gold"] == 3
    assert s["precision"] == pytest.approx(200 / 3)
    assert s["recall"] == pytest.approx(200 / 3)
    assert s["f1"] == pytest.approx(200 / 3)
    assert s["accuracy"] == pytest.approx(60.0)  # None == None counts for accuracy only
    parent = s["per_relation"]["/per/per/parent"]
    assert parent["p"] == pytest.approx(50.0) and parent["r"] == pytest.approx(50.0)
    assert parent["support"] == 2
    assert s["per_relation"]["/per/org/member_of"]["f1"] == pytest.approx(100.0)
    assert "None" not in s["per_relation"]


def test_re_correct_none_does_not_count_and_ids_work():
    s = re_scores([0, 0, 3], [0, 0, 0], negative=0)
    assert s["precision"] == 0.0 and s["recall"] == 0.0 and s["f1"] == 0.0  # no NaN
    assert s["per_relation"][3]["support"] == 1
    s = re_scores([0, 3], [3, 3], negative=0)
    assert s["precision"] == pytest.approx(50.0) and s["recall"] == pytest.approx(100.0)


def test_re_empty_and_length_mismatch():
    assert re_scores([], [])["f1"] == 0.0
    with pytest.raises(ValueError):
        re_scores(["None"], [])


def test_empty_input_scores_zero_for_both_tasks():
    from promu_lib.metrics import ner_scores, re_scores

    assert ner_scores([], [])["f1"] == re_scores([], [])["f1"] == 0.0
    assert ner_scores([], [])["per_type"] == {} and re_scores([], [])["per_relation"] == {}
