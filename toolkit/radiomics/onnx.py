"""Fitted radiomics pipelines as ONNX graphs, and running them with ONNX Runtime.

The correlation filter and the importance selection fix the feature subset
when they are fitted, and the sampler does nothing at prediction time, so the
fitted pipeline reduces to ``StandardScaler -> classifier`` on the selected
features. That is what the graph holds: one float32 input of shape ``[N, 1]``
per selected feature (and covariate), named after it and listed in order in the
model card; outputs ``label`` (class index) and ``probabilities`` (``[N,
classes]`` in the card's class order).

Agreement with scikit-learn: the pipeline is trained on float32-representable
values; its scaler keeps a float32-rounded mean (skl2onnx stores the mean as
float32) and is exported as ``(float64(x) - mean) / scale`` cast to float32
(skl2onnx's ``div_cast``), which is bit for bit what scikit-learn computes
before a tree casts its input to float32. Tree splits that fall exactly on a
training value therefore go the same way, and the graph reproduces
``predict_proba`` to about 1e-6 (the card records the largest difference on
the training and test lesions).

The bytes are canonical (:func:`metcli.io.cards.canonical_onnx`: opset imports,
node attributes and metadata in sorted order), so that the same model gives the
same ``model.onnx`` whatever Python's hash seed; train-radiomics adds the
``metcli.*`` metadata its card describes when it writes the graph
(:func:`metcli.radiomics.cards.stamp_graphs`).
"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import Sequence

import numpy as np

from metcli.core.devices import onnx_session
from metcli.io.cards import canonical_onnx
from metcli.radiomics.classifiers import CLASSIFIERS, get

log = logging.getLogger(__name__)

OUTPUT_LABEL = "label"
OUTPUT_PROBABILITIES = "probabilities"
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


@functools.lru_cache(maxsize=None)
def _register_scaler() -> None:
    """Tell skl2onnx about metcli's scaler, once."""
    from skl2onnx import update_registered_converter
    from skl2onnx.operator_converters.scaler_op import convert_sklearn_scaler
    from skl2onnx.shape_calculators.scaler import calculate_sklearn_scaler_output_shapes

    from metcli.radiomics.selection import Float32MeanScaler

    update_registered_converter(
        Float32MeanScaler,
        "MetcliFloat32MeanScaler",
        calculate_sklearn_scaler_output_shapes,
        convert_sklearn_scaler,
        options={"div": ["std", "div", "div_cast"]},
    )


def _register_classifier(classifier: str | None) -> None:
    """Register the converter the classifier's registry entry names (None: every entry's)."""
    entries = CLASSIFIERS.values() if classifier is None else [get(classifier)]
    for entry in entries:
        if entry.onnx_converter is not None:
            entry.onnx_converter()


def deployed_steps(pipeline):
    """(scaler, classifier) of a fitted training pipeline."""
    steps = dict(pipeline.named_steps)
    return steps["scale"], steps["clf"]


def input_names(pipeline) -> list[str]:
    """The names of the columns the scaler sees: the selected features, in order."""
    return [str(n) for n in pipeline.named_steps["select"].get_feature_names_out()]


def to_onnx(
    pipeline,
    names: Sequence[str] | None = None,
    *,
    model_name: str = "metcli",
    classifier: str | None = None,
) -> bytes:
    """The serialized ONNX graph of a fitted pipeline (see the module docstring).

    ``classifier``: the registry name of the pipeline's classifier, whose ONNX
    converter is registered first (None: the converters of every entry).
    """
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.pipeline import Pipeline

    names = list(names) if names is not None else input_names(pipeline)
    _register_scaler()
    _register_classifier(classifier)
    scaler, estimator = deployed_steps(pipeline)
    deployed = Pipeline([("scale", scaler), ("clf", estimator)])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # SVC's probA_, probB_
        onx = convert_sklearn(
            deployed,
            name=model_name,
            initial_types=[(n, FloatTensorType([None, 1])) for n in names],
            options={id(scaler): {"div": "div_cast"}, id(estimator): {"zipmap": False}},
            target_opset=dict(TARGET_OPSET),
        )
    outputs = [o.name for o in onx.graph.output]
    if outputs != [OUTPUT_LABEL, OUTPUT_PROBABILITIES]:
        raise RuntimeError(f"unexpected ONNX outputs {outputs}")
    onx.producer_name = "metcli"
    onx.doc_string = "metcli radiomics model: inputs are the selected features (see model.json)"
    return canonical_onnx(onx.SerializeToString())


def probabilities(sess, names: Sequence[str], values: np.ndarray) -> np.ndarray:
    """Class probabilities of the rows of ``values`` (columns in the order of ``names``).

    Clipped to [0, 1]: float32 arithmetic can give -1e-7 for a class no tree votes for.
    """
    values = np.asarray(values, dtype=np.float32)
    feeds = {n: np.ascontiguousarray(values[:, [i]]) for i, n in enumerate(names)}
    proba = np.asarray(sess.run([OUTPUT_PROBABILITIES], feeds)[0], dtype=np.float64)
    return np.clip(proba, 0.0, 1.0)


def chain(
    steps: Sequence[tuple[str, bytes]],
    columns: Sequence[Sequence[tuple[str, int]]],
    *,
    model_name: str = "metcli",
) -> bytes:
    """One ONNX graph that runs several step graphs and multiplies their probabilities.

    ``steps``: (step name, serialized graph from :func:`to_onnx`). ``columns[j]``
    lists the (step, column) probabilities whose product is output column ``j``
    (a hierarchical model: P(group) from step 1 times P(label | group) from the
    group's step 2). The inputs are the union of the steps' inputs, by name, in
    the order of ``steps``; the outputs ``label`` (index of the most probable
    column) and ``probabilities`` ([N, len(columns)], float32). Each step's
    nodes and initializers are prefixed with ``<step>/``; its own outputs stay in
    the graph (unused).
    """
    import onnx
    from onnx import TensorProto, helper

    nodes, initializers, value_infos, inputs, opsets, ir_version = _merged_steps(steps)
    products = _column_products(columns, nodes, initializers)
    nodes.append(
        helper.make_node("Concat", products, [OUTPUT_PROBABILITIES], axis=1, name="chain/concat")
    )
    nodes.append(
        helper.make_node(
            "ArgMax",
            [OUTPUT_PROBABILITIES],
            [OUTPUT_LABEL],
            axis=1,
            keepdims=0,
            name="chain/argmax",
        )
    )
    outputs = [
        helper.make_tensor_value_info(OUTPUT_LABEL, TensorProto.INT64, [None]),
        helper.make_tensor_value_info(
            OUTPUT_PROBABILITIES, TensorProto.FLOAT, [None, len(columns)]
        ),
    ]
    graph = helper.make_graph(
        nodes, model_name, inputs, outputs, initializer=initializers, value_info=value_infos
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        producer_name="metcli",
    )
    model.ir_version = ir_version
    model.doc_string = (
        "metcli hierarchical radiomics model: inputs are the selected features "
        "of every step (see model.json)"
    )
    onnx.checker.check_model(model)
    return canonical_onnx(model.SerializeToString())


def _merged_steps(steps: Sequence[tuple[str, bytes]]):
    """(nodes, initializers, value infos, inputs, opsets, IR version) of the step graphs,
    each prefixed with ``<step>/``; the inputs once each, by name, in order."""
    import onnx
    from onnx import compose

    nodes, initializers, value_infos, inputs, opsets = [], [], [], [], {}
    seen: set[str] = set()
    ir_version = None
    for step, blob in steps:
        model = onnx.load_from_string(blob)
        graph = compose.add_prefix_graph(model.graph, f"{step}/", rename_inputs=False)
        nodes.extend(graph.node)
        initializers.extend(graph.initializer)
        value_infos.extend(graph.value_info)
        for item in graph.input:
            if item.name not in seen:
                seen.add(item.name)
                inputs.append(item)
        for op in model.opset_import:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
        ir_version = max(ir_version or 0, model.ir_version)
    return nodes, initializers, value_infos, inputs, opsets, ir_version


def _column_products(
    columns: Sequence[Sequence[tuple[str, int]]], nodes: list, initializers: list
) -> list[str]:
    """Add the nodes that gather and multiply each output column's step probabilities
    (and their index initializers); the name of each column's product, in order."""
    from onnx import TensorProto, helper

    products = []
    for j, factors in enumerate(columns):
        parts = []
        for step, k in factors:
            index = f"chain/index_{step}_{k}"
            if index not in {i.name for i in initializers}:
                initializers.append(helper.make_tensor(index, TensorProto.INT64, [1], [k]))
            part = f"chain/{step}_{k}_of_{j}"
            nodes.append(
                helper.make_node(
                    "Gather",
                    [f"{step}/{OUTPUT_PROBABILITIES}", index],
                    [part],
                    axis=1,
                    name=f"chain/gather_{step}_{k}_{j}",
                )
            )
            parts.append(part)
        product = parts[0]
        for m, part in enumerate(parts[1:], start=1):
            out = f"chain/product_{j}_{m}"
            nodes.append(helper.make_node("Mul", [product, part], [out], name=f"chain/mul_{j}_{m}"))
            product = out
        products.append(product)
    return products


def max_difference(pipeline, model: bytes, frame, names: Sequence[str] | None = None) -> float:
    """Largest |ONNX - scikit-learn| probability on the rows of ``frame`` (all features).

    ``names``: the graph's inputs (default: the pipeline's selected features).
    """
    names = list(names) if names is not None else input_names(pipeline)
    onnx_proba = probabilities(onnx_session(model), names, frame.loc[:, names].to_numpy())
    return float(np.max(np.abs(onnx_proba - pipeline.predict_proba(frame))))
