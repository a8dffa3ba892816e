"""Model cards (``model.json``) and the ONNX graphs they describe.

A model folder holds ``model.onnx`` and its card. Both are made to check each
other, so that a card that no longer describes its graph is refused instead of
silently inverting or misfeeding every prediction:

- **The graph records what the card says about it.** ``metadata_props`` of
  ``model.onnx`` hold, under ``metcli.*`` keys and each as JSON,
  ``metcli.kind``, ``metcli.classes`` (in output order),
  ``metcli.positive_class`` (null for a multi-class model), ``metcli.inputs``
  (the graph's input names, in the card's order) and, for radiomics models,
  ``metcli.input_columns`` (the features-table or participants.tsv column of
  each input) (:func:`graph_metadata`).
- **The card records a checksum of itself.** ``card_sha256`` is the sha256 of
  the card's canonical JSON without that key: keys sorted at every level, no
  whitespace (``separators=(",", ":")``), UTF-8, as :func:`card_checksum`
  computes it.
- **The graph's bytes are canonical** (:func:`canonical_onnx`): opset imports
  sorted by domain, node attributes by name, metadata by key, so that the same
  model gives the same bytes whatever Python's hash seed (skl2onnx lists the
  opsets in set order).

:func:`check_card` is what predict runs on a model folder. A card without
``card_sha256`` beside a graph without ``metcli.*`` metadata was written by an
older metcli: it is accepted with a warning, its input names still checked
against the graph's (its classes cannot be).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from metcli.core.errors import InputError

log = logging.getLogger(__name__)

#: The card's key for the checksum of its own content.
CHECKSUM = "card_sha256"
#: The prefix of metcli's keys in a graph's ``metadata_props``.
PREFIX = "metcli."
#: metadata key -> (card field, how an error message names it), in the order checked.
FIELDS = {
    "metcli.kind": ("kind", "kind"),
    "metcli.classes": ("classes", "classes (in output order)"),
    "metcli.positive_class": ("positive_class", "positive class"),
    "metcli.inputs": ("inputs", "input names (in order)"),
    "metcli.input_columns": ("input_columns", "input columns (in input order)"),
}
FIX = (
    "copy the model folder again (model.onnx and model.json belong together and come from "
    "one run); do not edit model.json"
)


# ----------------------------------------------------------------------------- the card
def _canonical(doc: Any) -> bytes:
    return json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True
    ).encode("utf-8")


def card_checksum(card: Mapping[str, Any]) -> str:
    """The sha256 (hex) of the card's canonical JSON without its ``card_sha256``."""
    return hashlib.sha256(_canonical({k: v for k, v in card.items() if k != CHECKSUM})).hexdigest()


def with_checksum(card: Mapping[str, Any]) -> dict:
    """The card with its ``card_sha256`` (the last key)."""
    doc = {k: v for k, v in card.items() if k != CHECKSUM}
    doc[CHECKSUM] = card_checksum(doc)
    return doc


def input_names(card: Mapping[str, Any]) -> list[str]:
    """The names of the graph inputs a card describes, in order (radiomics: ``inputs``;
    image: the one ``input``)."""
    if "inputs" in card:
        return [str(item["name"]) for item in card["inputs"]]
    covariates = card["input"].get("covariates")
    return [str(card["input"]["name"])] + ([str(covariates["name"])] if covariates else [])


def _described(card: Mapping[str, Any]) -> dict[str, Any]:
    """What the card says about its graph, by card field (see :data:`FIELDS`)."""
    described = {
        "kind": card["kind"],
        "classes": list(card["classes"]),
        "positive_class": card.get("positive_class"),
        "inputs": input_names(card),
    }
    if "inputs" in card:
        described["input_columns"] = [item.get("column") for item in card["inputs"]]
    return described


def graph_metadata(card: Mapping[str, Any]) -> dict[str, str]:
    """The ``metcli.*`` metadata of the graph a card (or the part of one with ``kind``,
    ``classes``, ``positive_class`` and ``inputs`` or ``input``) describes; values as JSON."""
    described = _described(card)
    return {
        key: json.dumps(described[field], separators=(",", ":"), ensure_ascii=False)
        for key, (field, _) in FIELDS.items()
        if field in described
    }


# ----------------------------------------------------------------------------- the graph
def canonical_onnx(model: bytes, metadata: Mapping[str, str] | None = None) -> bytes:
    """The serialized graph with its set-ordered fields sorted (opset imports by domain,
    node attributes by name, functions by domain and name, metadata by key) and, given
    ``metadata``, its ``metcli.*`` metadata replaced by it."""
    import onnx

    proto = onnx.load_from_string(model)
    proto.opset_import.sort(key=lambda op: (op.domain, op.version))
    _sort_attributes(proto.graph.node)
    for function in proto.functions:
        _sort_attributes(function.node)
    proto.functions.sort(key=lambda f: (f.domain, f.name, f.overload))
    props = {p.key: p.value for p in proto.metadata_props}
    if metadata is not None:
        props = {k: v for k, v in props.items() if not k.startswith(PREFIX)}
        props.update(metadata)
    del proto.metadata_props[:]
    for key in sorted(props):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, props[key]
    return proto.SerializeToString(deterministic=True)


def _sort_attributes(nodes) -> None:
    """Sort each node's attributes by name, in subgraphs too."""
    for node in nodes:
        node.attribute.sort(key=lambda a: a.name)
        for attribute in node.attribute:
            for graph in [attribute.g, *attribute.graphs]:
                _sort_attributes(graph.node)


def read_graph(path: Path) -> tuple[list[str], dict[str, str]]:
    """(input names in order, metadata) of the ONNX graph at ``path``."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as exc:
        raise InputError(
            f"not a readable ONNX model ({exc.__class__.__name__})", path=path, fix=FIX
        ) from None
    constants = {i.name for i in proto.graph.initializer}
    names = [i.name for i in proto.graph.input if i.name not in constants]
    return names, {p.key: p.value for p in proto.metadata_props}


# ----------------------------------------------------------------------------- the checks
def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return "none" if value is None else str(value)


def _mismatch(what: str, in_card: Any, in_graph: Any, card_path: Path) -> InputError:
    return InputError(
        f"the card does not describe model.onnx: {what} {_show(in_card)} in model.json, "
        f"{_show(in_graph)} in model.onnx",
        path=card_path,
        fix=FIX,
    )


def check_graph(
    card: Mapping[str, Any],
    graph_inputs: Sequence[str],
    metadata: Mapping[str, str],
    *,
    card_path: Path,
) -> bool:
    """Check a card against its graph: the input names and their count, and, where the
    graph records ``metcli.*`` metadata, every field of it. Returns whether it does."""
    names, graph_inputs = input_names(card), [str(n) for n in graph_inputs]
    if len(names) != len(graph_inputs):
        raise _mismatch("number of inputs", len(names), len(graph_inputs), card_path)
    for k, (mine, theirs) in enumerate(zip(names, graph_inputs), start=1):
        if mine != theirs:
            raise _mismatch(f"input {k} is", mine, theirs, card_path)
    recorded = {k: v for k, v in metadata.items() if k.startswith(PREFIX)}
    if not recorded:
        return False
    described = _described(card)
    for key, (field, label) in FIELDS.items():
        if field not in described and key not in recorded:
            continue
        try:
            found = json.loads(recorded[key]) if key in recorded else "(not recorded)"
        except ValueError:
            found = recorded[key]
        mine = described.get(field, "(not recorded)")
        if found != mine:
            raise _field_mismatch(field, label, mine, found, card_path)
    return True


def _field_mismatch(field: str, label: str, mine: Any, found: Any, card_path: Path):
    """The error for a field that differs; for one input of many, that input alone."""
    per_input = field in ("inputs", "input_columns")
    if per_input and isinstance(mine, list) and isinstance(found, list):
        if len(mine) == len(found):
            k = next(k for k, (a, b) in enumerate(zip(mine, found)) if a != b)
            what = "name" if field == "inputs" else "column"
            return _mismatch(f"the {what} of input {k + 1} is", mine[k], found[k], card_path)
    return _mismatch(label, mine, found, card_path)


def check_card(card: Mapping[str, Any], onnx_path: Path, *, card_path: Path) -> None:
    """Check a card against ``model.onnx`` (:func:`check_graph`) and against its own
    ``card_sha256``; a card and graph of an older metcli (neither has them) pass with a
    warning. Any mismatch is an :class:`InputError` naming ``model.json``."""
    graph_inputs, metadata = read_graph(onnx_path)
    recorded = check_graph(card, graph_inputs, metadata, card_path=card_path)
    if CHECKSUM not in card:
        if recorded:
            raise InputError(
                f"the card has no {CHECKSUM}, but model.onnx was written by a metcli that "
                "records one (the card was edited or replaced)",
                path=card_path,
                fix=FIX,
            )
        log.warning(
            "%s: a card of an older metcli (no %s): its input names match model.onnx, but its "
            "classes cannot be checked against it; retrain the model with this metcli for a "
            "card that can",
            card_path,
            CHECKSUM,
        )
        return
    if not recorded:
        raise InputError(
            f"the card has a {CHECKSUM}, but model.onnx records no metcli metadata "
            "(the two files come from different runs)",
            path=card_path,
            fix=FIX,
        )
    if card_checksum(card) != card[CHECKSUM]:
        raise InputError(
            f"the card was changed after metcli wrote it: its content does not match its "
            f"{CHECKSUM}",
            path=card_path,
            fix=FIX,
        )
