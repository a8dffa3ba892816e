"""metcli.evaluation: evaluate and evaluate-seg: metrics with confidence intervals,
statistical tests, plots and the report.

The names in ``__all__`` are this room's public API: the names other rooms, the
command line, the tests and the benchmarks use. Each is imported from its module on
first use, so importing the room stays light.
"""

from __future__ import annotations

import importlib

#: public name -> the module of this room that defines it
_API = {
    "SECTIONS": "report",
    "agg_figure": "canvas",
    "class_mapping": "collapse",
    "draw_reader_points": "readers",
    "parse_collapse": "collapse",
    "table1_columns": "table1",
    "table1_table": "table1",
    "delong_ci": "stats",
    "find_prediction_files": "inputs",
    "load_predictions": "evaluate",
    "overlap_measures": "seg_measures",
    "read_typed_table": "seg_tables",
    "size_band": "seg_measures",
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
