"""metcli.io: BIDS-like names, atomic files and tables, participants, splits, the
predictions table, JSON Schemas, provenance sidecars, the weights manifest.

The names in ``__all__`` are this room's public API: the names other rooms, the
command line, the tests and the benchmarks use. Each is imported from its module on
first use, so importing the room stays light.
"""

from __future__ import annotations

import importlib

#: public name -> the module of this room that defines it
_API = {
    "AGGREGATES": "predictions",
    "Acquisition": "bids",
    "CHECKSUM": "cards",
    "CT_SUFFIX": "bids",
    "Channel": "channels",
    "DECISIONS": "cutoffs",
    "DICOM_EXTENSION": "bids",
    "Entities": "bids",
    "FINAL_CLASS_RULE": "cutoffs",
    "GROUP_TABLE": "predictions",
    "Hierarchy": "hierarchy",
    "KNOWN_PHASES": "bids",
    "NA": "files",
    "OutputSet": "files",
    "RULE_NAMES": "cutoffs",
    "SCHEMA": "hierarchy",
    "STEP1": "hierarchy",
    "Step": "provenance",
    "WeightsError": "weights",
    "aggregate_patients": "predictions",
    "apply_decision": "cutoffs",
    "argmax_labels": "cutoffs",
    "atomic_path": "files",
    "best_f1_cutoff": "cutoffs",
    "best_f1_cutoffs": "cutoffs",
    "canonical_onnx": "cards",
    "card_checksum": "cards",
    "channel_files": "channels",
    "channel_path": "channels",
    "check_card": "cards",
    "check_complete": "integrity",
    "check_cutoffs": "cutoffs",
    "check_graph": "cards",
    "check_labels": "hierarchy",
    "check_output_not_inside_input": "files",
    "choose_decision": "cutoffs",
    "clean_label": "bids",
    "cutoffs_apply": "cutoffs",
    "decide": "cutoffs",
    "decide_index": "cutoffs",
    "decided_labels": "cutoffs",
    "decision_record": "cutoffs",
    "derivative_path": "bids",
    "dump_json_to": "files",
    "encode_covariates": "covariates",
    "fetch": "weights",
    "find_files": "bids",
    "format_value": "files",
    "get_entry": "weights",
    "graph_metadata": "cards",
    "labels_by_participant": "participants",
    "list_models": "weights",
    "load_schema": "schemas",
    "metcli_home": "weights",
    "names_a_path": "weights",
    "owner_tag": "temporaries",
    "parse_aggregate": "predictions",
    "parse_channel": "channels",
    "parse_channels": "channels",
    "parse_name": "bids",
    "participant_folders": "bids",
    "participants_path": "participants",
    "predicted_labels": "predictions",
    "prediction_columns": "predictions",
    "prediction_rows": "predictions",
    "pretrained_file": "weights",
    "read_bvals": "channels",
    "read_graph": "cards",
    "read_hierarchy": "hierarchy",
    "read_image": "files",
    "read_json": "files",
    "read_label_rows": "participants",
    "read_participants": "participants",
    "read_rows": "predictions",
    "read_split": "splits",
    "read_table": "files",
    "read_tsv": "files",
    "resolve_levels": "bids",
    "resolve_model": "weights",
    "select_from_folder": "bids",
    "select_participants": "bids",
    "sha256_file": "files",
    "sha256_json": "files",
    "sidecar_path": "bids",
    "split_extension": "bids",
    "step2_name": "hierarchy",
    "tsv_text": "files",
    "upsert_participant": "participants",
    "uses_cutoffs": "cutoffs",
    "validate": "schemas",
    "validate_rows": "schemas",
    "verify": "weights",
    "volumes_of": "channels",
    "with_checksum": "cards",
    "write_dataset_description": "provenance",
    "write_image": "files",
    "write_image_to": "files",
    "write_participants": "participants",
    "write_tsv": "files",
    "write_tsv_to": "files",
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
