"""metcli.radiomics: pyradiomics settings and extraction, feature selection, the
classifiers, leakage-safe training, hierarchies and ONNX conversion.

The names in ``__all__`` are this room's public API: the names other rooms, the
command line, the tests and the benchmarks use. Each is imported from its module on
first use, so importing the room stays light.
"""

from __future__ import annotations

import importlib

#: public name -> the module of this room that defines it
_API = {
    "CLASSIFIERS": "classifiers",
    "ChannelSpec": "channels",
    "Classifier": "classifiers",
    "CorrelationFilter": "selection",
    "DESC": "extract",
    "IBSI_TAGS": "features",
    "LesionPool": "workers",
    "PRESETS": "params",
    "PermutationImportanceSelector": "selection",
    "RESULTS_COLUMNS": "outputs",
    "RegionResult": "columns",
    "SUFFIX": "extract",
    "as_params": "extract",
    "auc": "metrics",
    "check_options": "extract",
    "check_results": "outputs",
    "check_settings": "settings",
    "choose_threshold": "metrics",
    "cross_validate": "models",
    "encode_covariates": "data",
    "extract_acquisition": "acquisition",
    "extract_features": "features",
    "features_table_path": "data",
    "fit_search": "models",
    "help_text": "classifiers",
    "lesion_weights": "models",
    "load_params": "params",
    "params_from_dict": "params",
    "plan_search": "fold_limits",
    "read_features": "data",
    "register": "classifiers",
    "results_schema": "classifiers",
    "table_columns": "columns",
    "unregister": "classifiers",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
