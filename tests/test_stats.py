"""Wilson intervals and McNemar's exact test against published values; metrics carry both."""

import numpy as np
import pytest

from lorabudget.metrics import classification_metrics, format_metrics
from lorabudget.stats import discordant_counts, mcnemar, mcnemar_exact, rows_fingerprint, wilson_interval


@pytest.mark.parametrize(
    "successes,n,low,high",
    [
        # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3 (Wilson score, no correction)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_newcombe(successes, n, low, high):
    lo, hi = wilson_interval(successes, n)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)


def test_wilson_edges_and_width():
    assert wilson_interval(20, 20)[1] == 1.0 and wilson_interval(20, 20)[0] < 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # 90% on 300 rows is about +-3.4 points; on 1,000 rows about +-1.9 points
    lo300, hi300 = wilson_interval(270, 300)
    lo1k, hi1k = wilson_interval(900, 1000)
    assert 0.06 < hi300 - lo300 < 0.075 and 0.035 < hi1k - lo1k < 0.04
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_mcnemar_exact_textbook_cases():
    # Fagerland, Lydersen & Laake (2013), BMC Med Res Methodol 13:91: b=1, c=7 -> exact p = 0.070
    assert mcnemar_exact(1, 7) == pytest.approx(18 / 256)
    assert round(mcnemar_exact(7, 1), 3) == 0.070  # symmetric
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(4, 4) == 1.0
    # large counts: exact integers, no overflow, agrees with scipy's exact binomial test
    from scipy.stats import binomtest

    assert mcnemar_exact(3000, 3100) == pytest.approx(binomtest(3000, 6100).pvalue, rel=1e-9)
    assert mcnemar_exact(40, 80) == pytest.approx(binomtest(40, 120).pvalue, rel=1e-9)


def test_mcnemar_on_rows_counts_only_disagreements():
    a = [True, True, False, False, True, True]
    b = [True, False, False, True, False, False]
    assert discordant_counts(a, b) == (3, 1)
    result = mcnemar(a, b)
    assert result["only_a"] == 3 and result["only_b"] == 1 and result["p_value"] == pytest.approx(2 * 5 / 16)
    with pytest.raises(ValueError):
        discordant_counts([True], [True, False])


def test_classification_metrics_keep_rows_for_pairing():
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    logits = np.eye(4)[[0, 1, 2, 3, 0, 1, 2, 0, 1, 1]] * 3.0  # 8 of 10 right
    m = classification_metrics(logits, labels, ["a", "b", "c", "d"])
    assert m["n"] == 10 and m["accuracy"] == pytest.approx(0.8)
    assert m["accuracy_ci95"] == pytest.approx(list(wilson_interval(8, 10)))
    assert m["labels"] == labels.tolist() and m["predictions"][7] == 0 and sum(m["correct"]) == 8
    texts = [f"t{i}" for i in range(10)]
    with_texts = classification_metrics(logits, labels, ["a", "b", "c", "d"], texts=texts)
    assert with_texts["rows_fingerprint"] == rows_fingerprint(labels, texts) != m["rows_fingerprint"]
    assert rows_fingerprint(labels, texts[::-1]) != with_texts["rows_fingerprint"]
    assert "95% CI 0.4902–0.9433" in format_metrics(m)
