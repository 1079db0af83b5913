"""ticketctl.analysis.numerics: the one copy of the class-axis reductions and the OOD detection figures that the
metric registry and ``ensemble --ood`` share, checked against numpy's own reductions, written-out formulas and
scikit-learn, never against the code under test."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ticketctl.analysis import metrics, numerics, ood


@pytest.mark.parametrize("classes", [1, 2, 3, 8, 9, 12])
def test_class_reductions_match_numpy(classes):
    rng = np.random.default_rng(classes)
    a = rng.normal(size=(4, 7, classes))
    a[0, 0] = a[0, 0, 0]  # a row of equal entries: argmax takes the first
    best, arg = numerics.top(a)
    np.testing.assert_array_equal(best, a.max(-1))
    np.testing.assert_array_equal(arg, a.argmax(-1))
    np.testing.assert_array_equal(numerics.top_value(a), a.max(-1))
    np.testing.assert_allclose(numerics.class_sum(a), a.sum(-1), rtol=1e-12)
    p = rng.dirichlet(np.ones(classes), size=(5, 6))
    p[0, 0] = np.eye(classes)[0]  # a certain prediction: entropy 0 (the zeros clipped inside the log)
    want = -(p * np.log(np.clip(p, 1e-12, None))).sum(-1)
    np.testing.assert_allclose(numerics.entropy(p), want, rtol=1e-12, atol=1e-15)
    assert numerics.entropy(p)[0, 0] == pytest.approx(0.0, abs=1e-10)


def test_entropy_class_by_class_gives_the_bits_of_the_summed_terms():
    # the class-by-class loop adds the same terms in the same order as class_sum over the whole term array
    p = np.random.default_rng(1).dirichlet(np.ones(3), size=200)
    terms = p * np.log(np.clip(p, 1e-12, None))
    assert np.array_equal(numerics.entropy(p), -numerics.class_sum(terms))


def test_the_modules_share_one_copy():
    assert metrics.entropy is numerics.entropy and ood.entropy is numerics.entropy
    assert ood.auroc_rows is numerics.auroc_rows and ood.fpr_rows is numerics.fpr_rows
    assert metrics._top is numerics.top and metrics._csum is numerics.class_sum


def _rank_auroc(s_in, s_out):
    """Mann-Whitney U / (a b) from average ranks, written out with a double loop over the pairs."""
    return sum((x > y) + 0.5 * (x == y) for x in s_out for y in s_in) / (len(s_in) * len(s_out))


def test_detection_rows_with_ties_across_and_within_sides():
    rng = np.random.default_rng(5)
    s_in = np.round(rng.normal(0, 1, (5, 23)), 1)
    s_out = np.round(rng.normal(0.5, 1, (5, 17)), 1)
    s_out[0] = s_in[0, :17]  # every OOD score equal to an in-distribution one
    s_in[1] = 0.3  # one side constant
    auroc, fpr = numerics.detection_rows(s_in, s_out)
    np.testing.assert_array_equal(auroc, numerics.auroc_rows(s_in, s_out))
    np.testing.assert_array_equal(fpr, numerics.fpr_rows(s_in, s_out))
    for i in range(5):
        sk = roc_auc_score(np.r_[np.zeros(23), np.ones(17)], np.r_[s_in[i], s_out[i]])
        assert auroc[i] == pytest.approx(sk, abs=1e-12)
        assert auroc[i] == pytest.approx(_rank_auroc(s_in[i], s_out[i]), abs=1e-12)
        # the scalar forms are the batched ones on one row
        assert metrics.ood_auroc(s_in[i], s_out[i]) == auroc[i]
        assert metrics.fpr_at_tpr(s_in[i], s_out[i]) == fpr[i]
        t = np.sort(s_out[i])[::-1][int(np.ceil(0.95 * 17)) - 1]  # 17 of 17 flagged at >= t: the smallest
        assert fpr[i] == np.mean(s_in[i] >= t)


def test_detection_rows_refuse_mismatched_blocks():
    with pytest.raises(ValueError, match="as many rows"):
        numerics.auroc_rows(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="as many rows"):
        numerics.fpr_rows(np.zeros(3), np.zeros(3))
