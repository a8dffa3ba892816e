"""The classifier registry of ``metcli train-radiomics``: one entry per classifier.

Everything that depends on the classifier is derived from its :class:`Classifier`
entry: the estimator (:mod:`metcli.radiomics.models`), the ``--classifiers``
choices and their help, the classifier names the results schema allows
(:func:`results_schema`), the ONNX export (:mod:`metcli.radiomics.onnx`) and the
table of docs/train-radiomics.md (checked by the tests). A new classifier is one
:func:`register` call before the command runs::

    from metcli.radiomics.classifiers import Classifier, register

    def extra_trees(seed):
        from sklearn.ensemble import ExtraTreesClassifier
        return ExtraTreesClassifier(n_estimators=100, n_jobs=1, random_state=seed)

    register(Classifier("extra-trees", "extremely randomised trees", extra_trees,
                        grid={"min_samples_leaf": [1, 3]},
                        space=lambda: {"min_samples_leaf": [1, 2, 3, 5]}))

The estimator must have ``predict_proba`` and convert with skl2onnx (or give an
``onnx_converter`` that registers its converter). The entries are imported by
name only: this module imports no machine-learning library at import time.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from metcli.core.errors import UsageError
from metcli.core.registry import Registry

#: What a classifier name may be: it names the model folder ``<classifier>_<sampler>``.
NAME_PATTERN = r"^[a-z]+(-[a-z]+)*$"


@dataclass(frozen=True)
class Classifier:
    """One classifier: how to make it, tune it, weight it, export it and describe it.

    Attributes:
        name: the ``--classifiers`` name (lower-case words joined by ``-``).
        description: one line for ``--help`` and docs/train-radiomics.md.
        factory: ``seed -> estimator``: a fresh, unfitted scikit-learn compatible
            classifier with ``predict_proba``.
        grid: the default grid of ``--search grid`` (parameter -> values).
        space: returns the distributions of ``--search random`` (parameter ->
            values or a scipy distribution); called when a random search is made.
        sample_weights: whether ``fit`` takes ``sample_weight`` (used with
            ``--sampler none``; otherwise the classifier is trained unweighted).
        onnx_converter: registers the skl2onnx converter the estimator needs;
            None when skl2onnx converts it as it is.
        size_limited: parameters whose value cannot exceed the number of lesions
            the classifier is fitted on (KNN's ``n_neighbors``): values that the
            smallest training set of a search cannot take are left out of its
            grid (see :mod:`metcli.radiomics.fold_limits`).
    """

    name: str
    description: str
    factory: Callable[[int], Any]
    grid: Mapping[str, Sequence]
    space: Callable[[], Mapping[str, Any]]
    sample_weights: bool = True
    onnx_converter: Callable[[], None] | None = None
    size_limited: tuple[str, ...] = ()


def _check_entry(entry: Classifier) -> None:
    """Refuse an entry that cannot name a model folder, describe itself or be tuned."""
    if not isinstance(entry, Classifier):
        raise UsageError(f"register takes a Classifier, not {type(entry).__name__}")
    if not re.match(NAME_PATTERN, entry.name) or entry.name == "all":
        raise UsageError(
            f"classifier name {entry.name!r} is not valid",
            fix="use lower-case words joined by '-' (it names the model folder), other than 'all'",
        )
    if not entry.description.strip() or "\n" in entry.description:
        raise UsageError(f"classifier {entry.name!r}: the description must be one line")
    if not entry.grid or any(isinstance(v, str) or not len(v) for v in entry.grid.values()):
        raise UsageError(
            f"classifier {entry.name!r}: the grid must give each parameter a "
            "non-empty list of values"
        )


_REGISTRY: Registry[Classifier] = Registry(
    "classifier",
    unknown=lambda name, known: f"classifier {name!r} is not one of {known}",
    check=_check_entry,
)
#: The registered classifiers by name, in registration order (a read-only view).
CLASSIFIERS: Mapping[str, Classifier] = _REGISTRY.entries
#: Add a :class:`Classifier` after the ones already there (its name must be new).
register = _REGISTRY.register
#: Remove a classifier by name; returns its entry.
unregister = _REGISTRY.unregister
#: The entry of a classifier name (UsageError for a name that is not registered).
get = _REGISTRY.get


def help_text() -> str:
    """The help of ``--classifiers``: the choices, one line each with its description."""
    lines = [f"{e.name}: {e.description}" for e in _REGISTRY]
    return "all, or a comma-separated list of\n\n\b\n" + "\n".join(lines)


def results_schema() -> dict:
    """The schema of a results.tsv row, its classifier names being the registered ones.

    ``schemas/results.schema.json`` cannot know the registry, so its
    ``classifier`` property has no enum; this copy has one.
    """
    from metcli.io.schemas import load_schema

    schema = copy.deepcopy(load_schema("results"))
    schema["properties"]["classifier"]["enum"] = list(_REGISTRY.names())
    return schema


# ----------------------------------------------------------------------------- the study's eight
def _xgboost(seed: int):
    from xgboost import XGBClassifier

    return XGBClassifier(
        n_estimators=100,
        max_depth=3,
        learning_rate=0.1,
        tree_method="hist",
        n_jobs=1,
        random_state=seed,
        verbosity=0,
    )


def _xgboost_space() -> dict:
    from scipy.stats import loguniform, randint

    return {
        "n_estimators": randint(50, 300),
        "max_depth": randint(2, 7),
        "learning_rate": loguniform(0.01, 0.3),
    }


@functools.lru_cache(maxsize=None)
def _xgboost_converter() -> None:
    """Tell skl2onnx how to convert XGBClassifier (through onnxmltools), once."""
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes
    from xgboost import XGBClassifier

    update_registered_converter(
        XGBClassifier,
        "XGBoostXGBClassifier",
        calculate_linear_classifier_output_shapes,
        convert_xgboost,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )


def _random_forest(seed: int):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=100, n_jobs=1, random_state=seed)


def _random_forest_space() -> dict:
    from scipy.stats import randint

    return {
        "n_estimators": randint(50, 300),
        "max_depth": [None, 3, 5, 8],
        "min_samples_leaf": randint(1, 8),
    }


def _linear_svm(seed: int):
    from sklearn.svm import SVC

    return SVC(kernel="linear", probability=True, random_state=seed)


def _linear_svm_space() -> dict:
    from scipy.stats import loguniform

    return {"C": loguniform(1e-3, 1e1)}


def _kernel_svm(seed: int):
    from sklearn.svm import SVC

    return SVC(kernel="rbf", probability=True, random_state=seed)


def _kernel_svm_space() -> dict:
    from scipy.stats import loguniform

    return {"C": loguniform(1e-2, 1e2), "gamma": loguniform(1e-3, 1e0)}


def _knn(seed: int):
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=5)


def _knn_space() -> dict:
    from scipy.stats import randint

    return {"n_neighbors": randint(3, 25), "weights": ["uniform", "distance"]}


def _logistic_regression(seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=5000, random_state=seed)


def _logistic_regression_space() -> dict:
    from scipy.stats import loguniform

    return {"C": loguniform(1e-3, 1e2)}


def _naive_bayes(seed: int):
    from sklearn.naive_bayes import GaussianNB

    return GaussianNB()


def _naive_bayes_space() -> dict:
    from scipy.stats import loguniform

    return {"var_smoothing": loguniform(1e-12, 1e-2)}


def _decision_tree(seed: int):
    from sklearn.tree import DecisionTreeClassifier

    return DecisionTreeClassifier(random_state=seed)


def _decision_tree_space() -> dict:
    from scipy.stats import randint

    return {
        "max_depth": [2, 3, 4, 5, 6, None],
        "min_samples_leaf": randint(1, 10),
        "criterion": ["gini", "entropy"],
    }


register(
    Classifier(
        "xgboost",
        "gradient-boosted trees (XGBoost)",
        _xgboost,
        grid={"n_estimators": [100], "max_depth": [2, 4], "learning_rate": [0.05, 0.2]},
        space=_xgboost_space,
        onnx_converter=_xgboost_converter,
    )
)
register(
    Classifier(
        "random-forest",
        "random forest",
        _random_forest,
        grid={"n_estimators": [100], "min_samples_leaf": [1, 3]},
        space=_random_forest_space,
    )
)
register(
    Classifier(
        "linear-svm",
        "SVM, linear kernel",
        _linear_svm,
        grid={"C": [0.01, 0.1, 1.0]},
        space=_linear_svm_space,
    )
)
register(
    Classifier(
        "kernel-svm",
        "SVM, RBF kernel",
        _kernel_svm,
        grid={"C": [0.1, 1.0, 10.0], "gamma": ["scale"]},
        space=_kernel_svm_space,
    )
)
register(
    Classifier(
        "knn",
        "k-nearest neighbours (no sample weights)",
        _knn,
        grid={"n_neighbors": [5, 9, 15]},
        space=_knn_space,
        sample_weights=False,
        size_limited=("n_neighbors",),
    )
)
register(
    Classifier(
        "logistic-regression",
        "logistic regression (L2)",
        _logistic_regression,
        grid={"C": [0.01, 0.1, 1.0, 10.0]},
        space=_logistic_regression_space,
    )
)
register(
    Classifier(
        "naive-bayes",
        "Gaussian naive Bayes",
        _naive_bayes,
        grid={"var_smoothing": [1e-9, 1e-6, 1e-3]},
        space=_naive_bayes_space,
    )
)
register(
    Classifier(
        "decision-tree",
        "decision tree (CART)",
        _decision_tree,
        grid={"max_depth": [3, 5, None], "min_samples_leaf": [1, 5]},
        space=_decision_tree_space,
    )
)
