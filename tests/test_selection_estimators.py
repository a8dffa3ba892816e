"""The selection transformers are scikit-learn estimators: scikit-learn's own checks.

``parametrize_with_checks`` runs every check of ``check_estimator`` on the
correlation filter and the permutation-importance selector (input validation,
NaN and infinity refused, ``n_features_in_``, ``get_feature_names_out``, fitted
state, cloning, pickling...). A check they do not pass on purpose is listed in
:data:`EXPECTED_FAILURES` with the reason; it runs as a strict xfail, so it fails
the moment it starts to pass (then remove it from the list).

Skipped by scikit-learn itself: ``check_array_api_input`` (it runs only with the
environment variable ``SCIPY_ARRAY_API=1``; the selectors convert every input to
NumPy and declare no array-API support).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from metcli.radiomics.selection import CorrelationFilter, PermutationImportanceSelector

#: check name -> why the estimator does not pass it, per estimator class.
EXPECTED_FAILURES = {
    "CorrelationFilter": {},
    "PermutationImportanceSelector": {
        # The importances are measured on a held-out part of the training rows (a
        # StratifiedGroupKFold fold): repeating a row changes that split, so a weight
        # of 2 is not the same as a repeated row; and a weight of 0 can leave a class
        # with no weight in the forest's part (balanced class weights then divide by
        # zero). metcli's weights are positive (class and patient weights).
        "check_sample_weight_equivalence_on_dense_data": (
            "importances come from a held-out split of the rows, which weights do "
            "not reproduce; zero weights are not supported"
        ),
    },
}


def _expected_failures(estimator) -> dict:
    return EXPECTED_FAILURES[type(estimator).__name__]


@parametrize_with_checks(
    [
        CorrelationFilter(),
        # fewer trees and shuffles than the defaults: the same code, a faster test
        PermutationImportanceSelector(n_estimators=20, n_repeats=2),
    ],
    expected_failed_checks=_expected_failures,
    xfail_strict=True,
)
def test_sklearn_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_infinity_are_refused_not_dropped_as_constant(bad):
    """The filter once recorded a column with NaN as ``constant`` and dropped it."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(20, 3)), columns=["a", "b", "c"])
    frame.loc[4, "b"] = bad
    y = np.array([0, 1] * 10)
    for estimator, args in (
        (CorrelationFilter(), ()),
        (PermutationImportanceSelector(n_estimators=5, n_repeats=1), (y,)),
    ):
        with pytest.raises(ValueError, match="NaN|infinity"):
            estimator.fit(frame, *args)
    fitted = CorrelationFilter().fit(frame.fillna(0.0).replace(np.inf, 0.0))
    with pytest.raises(ValueError, match="NaN|infinity"):
        fitted.transform(frame)


def test_feature_names_and_output_kind_follow_the_input():
    """A DataFrame gives its names and stays a DataFrame; an array gives x0, x1..."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 30))
    values = np.column_stack([a, a + rng.normal(0, 0.01, 30), b])
    frame = pd.DataFrame(values, columns=["a", "a_copy", "b"])
    by_name = CorrelationFilter().fit(frame)
    assert list(by_name.get_feature_names_out()) == ["a", "b"]
    assert list(by_name.feature_names_in_) == ["a", "a_copy", "b"]
    out = by_name.transform(frame)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == ["a", "b"]
    assert out.equals(frame[["a", "b"]])
    with pytest.raises(ValueError, match="feature names"):
        by_name.transform(frame[["b", "a", "a_copy"]])
    by_index = CorrelationFilter().fit(values)
    assert not hasattr(by_index, "feature_names_in_") and by_index.n_features_in_ == 3
    assert list(by_index.get_feature_names_out()) == ["x0", "x2"]
    assert np.array_equal(by_index.transform(values), values[:, [0, 2]])
    with pytest.raises(ValueError, match="3 features"):
        by_index.transform(values[:, :2])
