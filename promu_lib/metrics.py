"""Evaluation metrics of both papers, in percent.

- MNER: entity-level micro P/R/F1 (span and type must match), computed by seqeval's API in its
  default (non-strict, CoNLL) mode on word-level BIO tag strings, as UMT/HVPNeT/PROMU report.
- MRE: micro P/R/F1 with ``None`` as the negative class, the rule of HVPNeT's
  ``modules/metrics.py::eval_result`` (and MNRE's): correct = (pred == gold and gold != None);
  P = correct / #(pred != None); R = correct / #(gold != None); F1 = 2PR / (P + R).
  A zero denominator gives 0, never NaN.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def ner_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Entity-level micro P/R/F1 and per-type scores (percent) of word-level BIO sequences.

    Returns ``{"precision", "recall", "f1", "per_type": {TYPE: {"p", "r", "f1", "support"}}}``;
    per_type holds every type seen in gold or predictions.
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sequences but {len(pred)} predicted ones")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sequence {i}: {len(g)} gold tags but {len(p)} predicted tags")
    if not gold:  # nothing to score: 0, like re_scores (seqeval itself raises on empty input)
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "per_type": {}}
    # imported here: seqeval pulls in scikit-learn (~1.7 s), which most processes never need
    from seqeval.metrics.sequence_labeling import get_entities, precision_recall_fscore_support

    y_true = [list(s) for s in gold]
    y_pred = [list(s) for s in pred]
    # the per-type and micro rows of seqeval's classification_report: two scoring passes and
    # one listing of the types (the report's own row names), where the report plus
    # precision/recall/f1_score take seven scoring passes (its micro row is the same sum)
    kw = {"zero_division": 0}
    names = sorted(
        {t for t, _, _ in get_entities(y_true)} | {t for t, _, _ in get_entities(y_pred)}
    )
    p, r, f1, support = precision_recall_fscore_support(y_true, y_pred, average=None, **kw)
    micro = precision_recall_fscore_support(y_true, y_pred, average="micro", **kw)
    per_type = {
        name: {"p": 100 * float(a), "r": 100 * float(b), "f1": 100 * float(c), "support": int(n)}
        for name, a, b, c, n in zip(names, p, r, f1, support)
    }
    return {
        "precision": 100 * float(micro[0]),
        "recall": 100 * float(micro[1]),
        "f1": 100 * float(micro[2]),
        "per_type": per_type,
    }


def re_scores(
    gold: Sequence[str | int], pred: Sequence[str | int], negative: str | int = "None"
) -> dict[str, Any]:
    """Micro P/R/F1 (percent) with ``negative`` as the no-relation class, plus per relation.

    Labels may be names or ids (pass ``negative=0`` for ids). Returns
    ``{"precision", "recall", "f1", "accuracy", "correct", "n_pred", "n_gold",
    "per_relation": {rel: {"p", "r", "f1", "support"}}}``; per_relation covers every
    non-negative label seen in gold or predictions (support = its gold count).
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
    correct = Counter(g for g, p in zip(gold, pred) if g == p and g != negative)
    n_gold = Counter(g for g in gold if g != negative)
    n_pred = Counter(p for p in pred if p != negative)
    c, ng, npred = sum(correct.values()), sum(n_gold.values()), sum(n_pred.values())
    p, r = _ratio(c, npred), _ratio(c, ng)
    per_relation = {}
    for rel in sorted(set(n_gold) | set(n_pred), key=str):
        pr, rr = _ratio(correct[rel], n_pred[rel]), _ratio(correct[rel], n_gold[rel])
        per_relation[rel] = {
            "p": 100 * pr,
            "r": 100 * rr,
            "f1": 100 * _f1(pr, rr),
            "support": n_gold[rel],
        }
    accuracy = _ratio(sum(g == q for g, q in zip(gold, pred)), len(gold))
    return {
        "precision": 100 * p,
        "recall": 100 * r,
        "f1": 100 * _f1(p, r),
        "accuracy": 100 * accuracy,
        "correct": c,
        "n_pred": npred,
        "n_gold": ng,
        "per_relation": per_relation,
    }
