"""metcli.evaluation.stats and metcli.evaluation.bootstrap: DeLong and Obuchowski against pROC
and their definitions, exact intervals, the patient bootstrap."""

from __future__ import annotations

import csv
import itertools
import shutil
import subprocess

import numpy as np
import pytest
from scipy.stats import beta
from sklearn.metrics import roc_auc_score

from metcli.evaluation import bootstrap, stats

# ----------------------------------------------------------------------------- pROC reference
# Source: R 4.2.2, pROC 1.18.0 (Debian r-cran-proc), on the aSAH example data of pROC
# (../shared/data/proc-asah/aSAH.csv, written from data(aSAH)), computed once with:
#
#   library(pROC)
#   d <- read.csv("aSAH.csv")
#   r <- roc(d$outcome, d$s100b, levels = c("Good", "Poor"), direction = "<")  # ndka, wfns
#   ci.auc(r, method = "delong")              # lower, AUC, upper (95%)
#   var(r, method = "delong")
#   roc.test(r1, r2, method = "delong", paired = TRUE)   # Z and p-value
#
# PROC_SCRIPT below is the same script; test_proc_reference_recomputed_with_r reruns it.
PROC_AUC = {  # marker: (AUC, 95% lower, 95% upper, DeLong variance)
    "s100b": (0.7313685637, 0.6301182118, 0.8326189156, 0.00266868245717),
    "ndka": (0.6119579946, 0.5012449993, 0.7226709899, 0.00319081054939),
    "wfns": (0.8236788618, 0.7485348878, 0.8988228358, 0.00146991470882),
}
PROC_TESTS = {  # (marker 1, marker 2): (Z, p-value) of the paired DeLong test
    ("s100b", "ndka"): (1.3907700257, 0.1642951752),
    ("s100b", "wfns"): (-2.2089835914, 0.02717578223),
    ("ndka", "wfns"): (-2.7977759187, 0.005145579707),
}
PROC_SCRIPT = r"""
suppressMessages(library(pROC))
d <- read.csv(commandArgs(trailingOnly = TRUE)[1])
r <- list()
for (m in c("s100b", "ndka", "wfns")) {
  r[[m]] <- roc(d$outcome, d[[m]], levels = c("Good", "Poor"), direction = "<", quiet = TRUE)
  ci <- ci.auc(r[[m]], method = "delong")
  cat(sprintf("auc %s %.10f %.10f %.10f %.12g\n", m, ci[2], ci[1], ci[3],
              var(r[[m]], method = "delong")))
}
for (p in list(c("s100b", "ndka"), c("s100b", "wfns"), c("ndka", "wfns"))) {
  t <- roc.test(r[[p[1]]], r[[p[2]]], method = "delong", paired = TRUE)
  cat(sprintf("test %s %s %.10f %.10g\n", p[1], p[2], t$statistic, t$p.value))
}
"""


def read_asah(data_dir):
    path = data_dir / "proc-asah" / "aSAH.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    poor = np.array([r["outcome"] == "Poor" for r in rows])
    markers = {m: np.array([float(r[m]) for r in rows]) for m in ("s100b", "ndka", "wfns")}
    return poor, markers


@pytest.mark.data
def test_delong_ci_agrees_with_proc(data_dir):
    poor, markers = read_asah(data_dir)
    for marker, (auc, low, high, var) in PROC_AUC.items():
        ci = stats.delong_ci(markers[marker], poor)
        assert round(ci.auc, 3) == round(auc, 3) and abs(ci.auc - auc) < 1e-8, marker
        assert round(ci.lower, 3) == round(low, 3) and abs(ci.lower - low) < 1e-8, marker
        assert round(ci.upper, 3) == round(high, 3) and abs(ci.upper - high) < 1e-8, marker
        assert ci.variance == pytest.approx(var, rel=1e-9), marker


@pytest.mark.data
def test_paired_delong_test_agrees_with_proc(data_dir):
    poor, markers = read_asah(data_dir)
    for (a, b), (z, p) in PROC_TESTS.items():
        test = stats.delong_paired_test(markers[a], markers[b], poor)
        assert round(test.statistic, 3) == round(z, 3) and abs(test.statistic - z) < 1e-8
        assert round(test.p_value, 3) == round(p, 3) and abs(test.p_value - p) < 1e-9
        assert test.difference == pytest.approx(PROC_AUC[a][0] - PROC_AUC[b][0], abs=1e-9)


def _proc_available() -> bool:
    if shutil.which("Rscript") is None:
        return False
    done = subprocess.run(
        ["Rscript", "-e", "suppressMessages(library(pROC))"], capture_output=True, timeout=60
    )
    return done.returncode == 0


@pytest.mark.data
def test_proc_reference_recomputed_with_r(data_dir, tmp_path):
    """The held reference numbers are what pROC computes, and metcli agrees with pROC."""
    read_asah(data_dir)
    if not _proc_available():
        pytest.skip("R's pROC is not installed (apt-get install r-base-core r-cran-proc)")
    script = tmp_path / "proc.R"
    script.write_text(PROC_SCRIPT)
    done = subprocess.run(
        ["Rscript", str(script), str(data_dir / "proc-asah" / "aSAH.csv")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    poor, markers = read_asah(data_dir)
    seen = 0
    for line in done.stdout.splitlines():
        parts = line.split()
        if parts[0] == "auc":
            marker, auc, low, high, var = parts[1], *map(float, parts[2:])
            assert (auc, low, high) == pytest.approx(PROC_AUC[marker][:3], abs=1e-9)
            ci = stats.delong_ci(markers[marker], poor)
            assert (ci.auc, ci.lower, ci.upper, ci.variance) == pytest.approx(
                (auc, low, high, var), abs=1e-8
            )
            seen += 1
        elif parts[0] == "test":
            a, b, z, p = parts[1], parts[2], float(parts[3]), float(parts[4])
            assert (z, p) == pytest.approx(PROC_TESTS[(a, b)], abs=1e-9)
            test = stats.delong_paired_test(markers[a], markers[b], poor)
            assert (test.statistic, test.p_value) == pytest.approx((z, p), abs=1e-8)
            seen += 1
    assert seen == 6


# ----------------------------------------------------------------------------- DeLong
def test_delong_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(3)
    truth = rng.random(60) < 0.4
    scores = np.round(rng.normal(truth * 0.8, 1.0), 1)  # rounding makes many ties
    aucs, v10, v01 = stats.delong_placements(scores, truth)
    assert aucs[0] == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
    assert v10.mean() == pytest.approx(aucs[0]) and v01.mean() == pytest.approx(aucs[0])


def test_delong_placements_match_their_definition():
    rng = np.random.default_rng(4)
    truth = np.array([True] * 7 + [False] * 9)
    scores = rng.integers(0, 5, size=16).astype(float)
    _aucs, v10, v01 = stats.delong_placements(scores, truth)
    x, y = scores[truth], scores[~truth]
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    assert v10[0] == pytest.approx(psi.mean(axis=1))
    assert v01[0] == pytest.approx(psi.mean(axis=0))


def test_paired_delong_of_identical_scores_has_no_test():
    truth = np.array([0, 0, 1, 1, 0, 1], dtype=bool)
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    test = stats.delong_paired_test(scores, scores, truth)
    assert test.difference == 0 and np.isnan(test.p_value) and "zero variance" in test.note


def test_perfect_and_reversed_scores():
    truth = np.array([0, 0, 0, 1, 1, 1], dtype=bool)
    perfect = stats.delong_ci([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], truth)
    assert (perfect.auc, perfect.variance, perfect.lower, perfect.upper) == (1.0, 0.0, 1.0, 1.0)
    wrong = stats.delong_ci([0.9, 0.8, 0.7, 0.3, 0.2, 0.1], truth)
    assert (wrong.auc, wrong.lower, wrong.upper) == (0.0, 0.0, 0.0)
    ties = stats.delong_ci([0.5] * 6, truth)
    assert ties.auc == 0.5 and ties.variance == 0.0


def test_delong_needs_both_classes():
    with pytest.raises(ValueError, match="at least one positive and one negative"):
        stats.delong_placements([0.1, 0.2], [True, True])
    one_positive = stats.delong_ci([0.1, 0.2, 0.9], [False, False, True])
    assert one_positive.auc == 1.0 and np.isnan(one_positive.lower)


# ----------------------------------------------------------------------------- Obuchowski
def _obuchowski_by_definition(scores, positive, clusters):
    """Obuchowski (1997) with explicit sums over every pair of units (slow, obvious)."""
    ids = sorted(set(clusters))
    units = list(zip(scores, positive, clusters))
    pos = [(s, c) for s, p, c in units if p]
    neg = [(s, c) for s, p, c in units if not p]
    big_m, big_n = len(pos), len(neg)

    def psi(x, y):
        return 1.0 if x > y else 0.5 if x == y else 0.0

    theta = sum(psi(x, y) for x, _ in pos for y, _ in neg) / (big_m * big_n)
    v10 = {i: sum(psi(x, y) for x, cx in pos if cx == i for y, _ in neg) / big_n for i in ids}
    v01 = {i: sum(psi(x, y) for y, cy in neg if cy == i for x, _ in pos) / big_m for i in ids}
    m_i = {i: sum(1 for _, c in pos if c == i) for i in ids}
    n_i = {i: sum(1 for _, c in neg if c == i) for i in ids}
    i10 = sum(1 for i in ids if m_i[i] > 0)
    i01 = sum(1 for i in ids if n_i[i] > 0)
    big_i = len(ids)
    s10 = i10 / ((i10 - 1) * big_m) * sum((v10[i] - m_i[i] * theta) ** 2 for i in ids)
    s01 = i01 / ((i01 - 1) * big_n) * sum((v01[i] - n_i[i] * theta) ** 2 for i in ids)
    s11 = (
        big_i
        / (big_i - 1)
        * sum((v10[i] - m_i[i] * theta) * (v01[i] - n_i[i] * theta) for i in ids)
    )
    return theta, s10 / big_m + s01 / big_n + 2 * s11 / (big_m * big_n)


def test_obuchowski_matches_its_definition_with_mixed_clusters():
    rng = np.random.default_rng(5)
    clusters = np.repeat(np.arange(9), rng.integers(1, 5, size=9))
    positive = rng.random(clusters.size) < 0.5  # clusters with both kinds of unit
    scores = np.round(rng.normal(positive * 1.0, 1.0), 1)
    auc, var = stats.obuchowski_variance(scores, positive, clusters)
    ref_auc, ref_var = _obuchowski_by_definition(
        scores.tolist(), positive.tolist(), clusters.tolist()
    )
    assert auc == pytest.approx(ref_auc, abs=1e-12)
    assert var == pytest.approx(ref_var, rel=1e-10)


def test_obuchowski_reduces_to_delong_with_one_lesion_per_patient_on_tied_scores():
    rng = np.random.default_rng(6)
    positive = rng.random(50) < 0.3
    scores = np.round(rng.normal(positive * 0.7, 1.0), 1)
    clusters = rng.permutation(50)  # one unit per cluster, ids in any order
    auc, var = stats.obuchowski_variance(scores, positive, clusters)
    ci = stats.delong_ci(scores, positive)
    assert auc == pytest.approx(ci.auc, abs=1e-12)
    assert var == pytest.approx(ci.variance, rel=1e-12)
    assert stats.obuchowski_ci(scores, positive, clusters).upper == pytest.approx(ci.upper)


@pytest.mark.data
def test_obuchowski_reduces_to_delong_with_one_lesion_per_patient(data_dir):
    poor, markers = read_asah(data_dir)
    patients = [f"sub-{i:03d}" for i in range(poor.size)]
    for marker, scores in markers.items():
        auc, var = stats.obuchowski_variance(scores, poor, patients)
        assert auc == pytest.approx(PROC_AUC[marker][0], abs=1e-9)
        assert var == pytest.approx(stats.delong_ci(scores, poor).variance, rel=1e-12)
        assert var == pytest.approx(PROC_AUC[marker][3], rel=1e-8)


def _clustered_sample(seed=11, patients=40):
    """Lesions share their patient's score (strong patient effect), little lesion noise."""
    rng = np.random.default_rng(seed)
    label = np.arange(patients) % 2 == 1
    effect = rng.normal(label * 1.0, 1.0)
    counts = rng.integers(2, 9, size=patients)
    cluster = np.repeat(np.arange(patients), counts)
    scores = effect[cluster] + rng.normal(0.0, 0.1, size=cluster.size)
    return scores, label[cluster], cluster, label


def test_lesion_level_intervals_are_wider_than_naive_ones_on_clustered_data():
    scores, positive, cluster, patient_label = _clustered_sample()
    naive = stats.delong_ci(scores, positive)  # lesions treated as independent
    clustered = stats.obuchowski_ci(scores, positive, cluster)
    assert clustered.auc == pytest.approx(naive.auc)
    assert clustered.upper - clustered.lower > 1.5 * (naive.upper - naive.lower)
    # Bootstrap: resampling patients vs resampling lesions.
    by_patient = bootstrap.unit_weights(
        bootstrap.cluster_bootstrap_weights(patient_label, 400, 1), cluster
    )
    by_lesion = bootstrap.cluster_bootstrap_weights(positive, 400, 1)
    low_p, high_p, _ = bootstrap.percentile_interval(
        bootstrap.weighted_auc(scores, positive, by_patient)
    )
    low_l, high_l, _ = bootstrap.percentile_interval(
        bootstrap.weighted_auc(scores, positive, by_lesion)
    )
    assert high_p - low_p > 1.5 * (high_l - low_l)
    # The two clustered intervals agree roughly with each other.
    assert abs((high_p - low_p) - (clustered.upper - clustered.lower)) < 0.1


# ----------------------------------------------------------------------------- proportions
@pytest.mark.parametrize("count,nobs", [(0, 8), (3, 8), (8, 8), (1, 1), (17, 40)])
def test_clopper_pearson_equals_exact_beta_quantiles(count, nobs):
    low, high = stats.clopper_pearson(count, nobs)
    expected_low = 0.0 if count == 0 else beta.ppf(0.025, count, nobs - count + 1)
    expected_high = 1.0 if count == nobs else beta.ppf(0.975, count + 1, nobs - count)
    assert low == pytest.approx(expected_low, abs=1e-12)
    assert high == pytest.approx(expected_high, abs=1e-12)


def test_clopper_pearson_of_nothing_is_undefined():
    assert all(np.isnan(stats.clopper_pearson(0, 0)))


def test_mcnemar_exact_and_no_discordant_pairs():
    a = np.array([True] * 10 + [False] * 6)
    b = np.array([True] * 16)
    result = stats.mcnemar_test(a, b)
    assert (result.only_a_correct, result.only_b_correct) == (0, 6)
    assert result.p_value == pytest.approx(2 * 0.5**6)  # exact binomial, two-sided
    same = stats.mcnemar_test(a, a)
    assert same.p_value == 1.0 and same.method == "no discordant pairs"


# ----------------------------------------------------------------------------- bootstrap
def test_bootstrap_weights_are_deterministic_for_a_seed_and_keep_the_strata():
    strata = ["a"] * 5 + ["b"] * 3
    first = bootstrap.cluster_bootstrap_weights(strata, 50, seed=7)
    again = bootstrap.cluster_bootstrap_weights(strata, 50, seed=7)
    other = bootstrap.cluster_bootstrap_weights(strata, 50, seed=8)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert (first[:, :5].sum(axis=1) == 5).all() and (first[:, 5:].sum(axis=1) == 3).all()
    assert first.shape == (50, 8) and (first >= 0).all()


def test_weighted_auc_is_the_auc_of_the_duplicated_sample():
    rng = np.random.default_rng(9)
    truth = rng.random(30) < 0.5
    scores = np.round(rng.random(30), 1)
    weights = rng.integers(0, 4, size=(5, 30))
    got = bootstrap.weighted_auc(scores, truth, np.vstack([np.ones(30), weights]))
    assert got[0] == pytest.approx(roc_auc_score(truth, scores))
    for row, value in zip(weights, got[1:]):
        keep = np.repeat(np.arange(30), row)
        assert value == pytest.approx(roc_auc_score(truth[keep], scores[keep]))


def test_weighted_rates_equal_sklearn():
    from sklearn.metrics import accuracy_score, brier_score_loss, confusion_matrix, f1_score

    rng = np.random.default_rng(10)
    y = rng.integers(0, 3, size=40)
    pred = np.where(rng.random(40) < 0.6, y, rng.integers(0, 3, size=40))
    prob = rng.dirichlet(np.ones(3), size=40)
    ones = np.ones((1, 40))
    counts = bootstrap.confusion_counts(y, pred, 3, ones)
    assert np.array_equal(counts[0], confusion_matrix(y, pred, labels=[0, 1, 2]))
    assert bootstrap.accuracy_from_counts(counts)[0] == pytest.approx(accuracy_score(y, pred))
    for c in range(3):
        rates = bootstrap.one_vs_rest_rates(counts, c)
        tn, fp, fn, tp = confusion_matrix(y == c, pred == c).ravel()
        assert rates["sensitivity"][0] == pytest.approx(tp / (tp + fn))
        assert rates["specificity"][0] == pytest.approx(tn / (tn + fp))
        assert rates["ppv"][0] == pytest.approx(tp / (tp + fp))
        assert rates["npv"][0] == pytest.approx(tn / (tn + fn))
        assert rates["f1"][0] == pytest.approx(f1_score(y == c, pred == c))
    onehot = np.eye(3)[y]
    assert bootstrap.weighted_brier(onehot, prob, ones)[0] == pytest.approx(
        brier_score_loss(y, prob, labels=[0, 1, 2])
    )
    assert bootstrap.weighted_brier(onehot, prob, ones, positive_index=1)[0] == pytest.approx(
        brier_score_loss(y == 1, prob[:, 1])
    )


def test_roc_band_of_a_perfect_classifier_is_flat_at_one():
    truth = np.array([0, 0, 0, 1, 1, 1], dtype=bool)
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    weights = bootstrap.cluster_bootstrap_weights(truth, 100, 0)
    grid = np.linspace(0, 1, 11)
    median, low, high = bootstrap.weighted_roc_band(scores, truth, weights, grid)
    assert (median == 1).all() and (low == 1).all() and (high == 1).all()


def test_roc_band_brackets_the_curve():
    rng = np.random.default_rng(12)
    truth = rng.random(80) < 0.5
    scores = rng.normal(truth * 1.0, 1.0)
    weights = bootstrap.cluster_bootstrap_weights(truth, 300, 0)
    grid = np.linspace(0, 1, 21)
    median, low, high = bootstrap.weighted_roc_band(scores, truth, weights, grid)
    assert (low <= median).all() and (median <= high).all()
    point = bootstrap.weighted_roc_band(scores, truth, np.ones((1, 80)), grid)[0]
    inside = (point >= low - 1e-12) & (point <= high + 1e-12)
    assert inside.mean() > 0.9


def test_bootstrap_paired_test():
    rng = np.random.default_rng(13)
    a = rng.normal(0.8, 0.05, size=500)
    b = a - 0.1 + rng.normal(0, 0.01, size=500)
    test = bootstrap.bootstrap_paired_test(0.8, 0.7, a, b)
    assert test.difference == pytest.approx(0.1) and test.p_value < 1e-6
    same = bootstrap.bootstrap_paired_test(0.8, 0.8, a, a)
    assert np.isnan(same.p_value) and "does not vary" in same.note


def test_percentile_interval_ignores_undefined_resamples():
    values = np.r_[np.linspace(0, 1, 101), [np.nan] * 10]
    low, high, used = bootstrap.percentile_interval(values)
    assert used == 101 and low == pytest.approx(0.025) and high == pytest.approx(0.975)
    assert bootstrap.percentile_interval([np.nan, np.nan])[2] == 0


@pytest.mark.data
def test_all_pairs_of_proc_markers_are_antisymmetric(data_dir):
    poor, markers = read_asah(data_dir)
    for a, b in itertools.permutations(markers, 2):
        ab = stats.delong_paired_test(markers[a], markers[b], poor)
        ba = stats.delong_paired_test(markers[b], markers[a], poor)
        assert ab.statistic == pytest.approx(-ba.statistic) and ab.p_value == pytest.approx(
            ba.p_value
        )
