"""Everything train-radiomics writes, at once: model folders, group tables, sidecars.

``<classifier>_<sampler>/`` gets ``model.onnx`` (with the ``metcli.*`` metadata
of its card), ``model.json`` (the card, :mod:`metcli.radiomics.cards`, with its
``card_sha256``), ``oof_predictions.tsv`` and, with a test set,
``predictions.tsv``; a hierarchical model also one sub-folder per step. The
group level gets ``results.tsv``, ``selected_features.tsv``, ``split.tsv``,
``oof_predictions.tsv`` and ``predictions.tsv``. Every table is checked
against its schema (results.tsv also against :func:`results_schema`, whose
classifier names are the registry's) and gets a sidecar; the files appear
together when all of them are written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metcli.core.errors import SchemaError
from metcli.radiomics.cards import card, chain_card, stamp_graphs, step_card
from metcli.radiomics.classifiers import results_schema
from metcli.radiomics.models import CVOutcome
from metcli.radiomics.results import ModelResult, TrainingResult
from metcli.radiomics.settings import Settings

RESULTS_COLUMNS = (
    "classifier",
    "sampler",
    "model",
    "level",
    "cv_auc",
    "cv_auc_sd",
    "cv_accuracy",
    "cv_balanced_accuracy",
    "test_auc",
    "test_accuracy",
    "test_balanced_accuracy",
    "threshold",
    "threshold_source",
    "n_features",
    "hyperparameters",
    "selected_by_cv",
)
SELECTED_COLUMNS = (
    "feature",
    "kind",
    "selected",
    "rank",
    "importance",
    "importance_sd",
    "filter_frequency",
    "selection_frequency",
    "final_importance",
)
SPLIT_COLUMNS = ("participant_id", "set", "fold")


def selected_rows(chosen: ModelResult, outcome: CVOutcome, cohort) -> list[dict]:
    """The rows of selected_features.tsv for one model (or step) and its CV outcome."""
    select = chosen.pipeline.named_steps["select"]
    final_imp = {
        n: float(v) for n, v in zip(select.feature_names_in_, select.importances_) if np.isfinite(v)
    }
    covariates = set(cohort.keep)
    final = [n for n in chosen.inputs if n not in covariates]
    fits = max(len(outcome.selected), 1)
    rows = []
    for name in cohort.features:
        values = [imp[name] for imp in outcome.importances if name in imp]
        rows.append(
            {
                "feature": name,
                "kind": "feature",
                "selected": name in final,
                "rank": final.index(name) + 1 if name in final else None,
                "importance": float(np.mean(values)) if values else None,
                "importance_sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                "filter_frequency": sum(name in kept for kept in outcome.filter_kept) / fits,
                "selection_frequency": sum(name in kept for kept in outcome.selected) / fits,
                "final_importance": final_imp.get(name),
            }
        )
    for name in cohort.keep:
        rows.append(
            {
                "feature": name,
                "kind": "covariate",
                "selected": True,
                "rank": None,
                "importance": None,
                "importance_sd": None,
                "filter_frequency": 1.0,
                "selection_frequency": 1.0,
                "final_importance": None,
            }
        )
    rows.sort(
        key=lambda r: (
            not r["selected"],
            r["rank"] or 10**9,
            -r["selection_frequency"],
            -r["filter_frequency"],
            r["feature"],
        )
    )
    return rows


def check_results(rows: list[dict], columns, *, where: Path) -> None:
    """Check results.tsv's rows against :func:`results_schema` (the registered classifiers)."""
    import jsonschema

    schema = results_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    for number, row in enumerate(rows, start=2):
        record = {c: _plain(row.get(c)) for c in columns}
        error = next(iter(validator.iter_errors(record)), None)
        if error is not None:
            at = "/".join(str(p) for p in error.absolute_path) or "(top level)"
            raise SchemaError(
                f"line {number} does not follow the results schema at {at}: {error.message}",
                path=where,
                fix="register the classifier (metcli.radiomics.classifiers) or "
                "report a bug if metcli wrote it",
            )


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones, NaN as None (what JSON Schema understands)."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    return None if isinstance(value, float) and value != value else value


@dataclass
class _Writer:
    """The outputs of one run: tables and graphs into the OutputSet, sidecars last."""

    outs: Any  # metcli.io.files.OutputSet
    result: TrainingResult
    cohort: Any
    plan: Any
    settings: Settings
    train_rows: np.ndarray
    test_rows: np.ndarray
    written: list[Path] = field(default_factory=list)
    pending: list[tuple[Path, dict, dict, str]] = field(default_factory=list)

    def table(self, rows, columns, final: Path, schema: str) -> dict:
        from metcli.io.files import write_tsv_to

        tmp = self.outs.path(final)
        write_tsv_to(rows, columns, tmp, schema=schema, where=final)
        self.written.append(final)
        return {final: tmp}

    def graph(self, final: Path, model: bytes) -> dict:
        tmp = self.outs.path(final)
        tmp.write_bytes(model)
        self.written.append(final)
        return {final: tmp}

    def sidecar(self, path: Path, produced: dict, extra: dict, schema: str = "sidecar") -> None:
        """Note a sidecar (or card) to write once every table is written."""
        self.pending.append((path, produced, extra, schema))

    def write_sidecars(self, step, inputs) -> None:
        """Write the noted sidecars and cards; a card gets its checksum (``card_sha256``)."""
        from metcli.io.cards import with_checksum
        from metcli.io.files import dump_json_to
        from metcli.io.schemas import validate

        for sidecar, produced, extra, schema in self.pending:
            doc = step.sidecar(inputs, produced, extra=extra)
            if schema == "model_card":
                doc = with_checksum(doc)
            validate(doc, "sidecar", where=sidecar)
            dump_json_to(doc, self.outs.path(sidecar), schema=schema, where=sidecar)
            self.written.append(sidecar)

    def model_folder(
        self, name: str, model: ModelResult, base: dict, columns, group_oof: list, group_test: list
    ) -> dict:
        """A model's folder (graphs, cards, predictions); returns its entry of ``models``."""
        from metcli.io.cutoffs import apply_decision
        from metcli.io.predictions import prediction_rows

        result, cohort, folder = self.result, self.cohort, self.result.out_dir / name
        produced = self.graph(folder / "model.onnx", model.onnx)
        self.sidecar(
            folder / "model.json",
            produced,
            (
                chain_card(
                    model, result, cohort, self.plan, self.settings, self.train_rows, self.test_rows
                )
                if model.steps
                else card(
                    model, result, cohort, self.plan, self.settings, self.train_rows, self.test_rows
                )
            ),
            "model_card",
        )
        for step_name, part in model.steps.items():
            produced = self.graph(folder / step_name / "model.onnx", part.onnx)
            self.sidecar(
                folder / step_name / "model.json",
                produced,
                step_card(part, model, result, self.plan, self.settings),
                "model_card",
            )
        info = {
            "threshold": model.threshold,
            "threshold_source": model.threshold_source,
            "selected": name == result.selected,
        }
        if model.threshold is None:
            del info["threshold"]
        if model.decision is not None:  # the per-class cut-offs (evaluate reads them)
            info["decision"] = model.decision
        for set_name, rows_idx, proba, file in (
            ("train", self.train_rows, model.oof, "oof_predictions"),
            ("test", self.test_rows, model.test_proba, "predictions"),
        ):
            if set_name == "test" and not len(self.test_rows):
                continue
            rows = prediction_rows(
                cohort.participants[rows_idx],
                cohort.lesion_ids[rows_idx],
                proba,
                cohort.classes,
                model=name,
                set_name=set_name,
                positive=cohort.positive,
                threshold=model.threshold,
            )
            apply_decision(rows, cohort.classes, model.decision)
            (group_oof if set_name == "train" else group_test).extend(rows)
            produced = self.table(rows, columns, folder / f"{file}.tsv", "predictions")
            what = (
                "out-of-fold predictions of the training patients (mean over repeats)"
                if set_name == "train"
                else "predictions of the test set"
            )
            self.sidecar(
                folder / f"{file}.json",
                produced,
                {"Description": f"{model.name}: {what}", **base, "model": name, **info},
            )
        return info

    def group_predictions(
        self, columns, group_oof: list, group_test: list, group_extra: dict
    ) -> None:
        out = self.result.out_dir
        produced = self.table(group_oof, columns, out / "oof_predictions.tsv", "predictions")
        self.sidecar(
            out / "oof_predictions.json",
            produced,
            {
                "Description": "Out-of-fold predictions of every model for the training patients "
                "(set train; mean over the CV repeats)",
                **group_extra,
            },
        )
        if len(self.test_rows):
            produced = self.table(group_test, columns, out / "predictions.tsv", "predictions")
            self.sidecar(
                out / "predictions.json",
                produced,
                {"Description": "Test-set predictions of every model (set test)", **group_extra},
            )

    def split(self, folds) -> None:
        out, cohort, plan = self.result.out_dir, self.cohort, self.plan
        fold_of = {}
        for row, fold in zip(self.train_rows, folds):
            fold_of[cohort.participants[row]] = int(fold)
        split_rows = [
            {"participant_id": p, "set": "train", "fold": fold_of.get(p)} for p in plan.train
        ] + [{"participant_id": p, "set": "test", "fold": None} for p in plan.test]
        produced = self.table(
            sorted(split_rows, key=lambda r: r["participant_id"]),
            SPLIT_COLUMNS,
            out / "split.tsv",
            "split",
        )
        self.sidecar(
            out / "split.json",
            produced,
            {
                "Description": f"Patients of the training and test sets ({plan.source}); fold: "
                "outer cross-validation fold of the first repeat",
                "ExcludedParticipants": self.result.excluded,
            },
        )

    def selected_features(self, selection: dict) -> None:
        result, out = self.result, self.result.out_dir
        chosen = result.models[result.selected]
        rows = []
        for step_name, (step_outcome, step_cohort) in selection.items():
            part = chosen if step_name is None else chosen.steps[step_name]
            for row in selected_rows(part, step_outcome, step_cohort):
                rows.append(row if step_name is None else {"step": step_name, **row})
        hierarchical = result.hierarchy is not None
        produced = self.table(
            rows,
            (("step",) if hierarchical else ()) + SELECTED_COLUMNS,
            out / "selected_features.tsv",
            "selected_features",
        )
        self.sidecar(
            out / "selected_features.json",
            produced,
            {
                "Description": "Features after the correlation filter and the permutation "
                "importance selection: selected = in the final models; importance "
                "= mean over the outer folds of the random forest's permutation "
                "importance on held-out patients; frequencies over the outer fits"
                + (
                    "; one block of rows per step of the hierarchy (each step "
                    "selects its own features)"
                    if hierarchical
                    else ""
                ),
                "selected_model": result.selected,
            },
        )

    def results(self, group_extra: dict) -> None:
        result, out = self.result, self.result.out_dir
        hierarchical = result.hierarchy is not None
        columns = (
            RESULTS_COLUMNS[:3] + ("step",) + RESULTS_COLUMNS[3:]
            if hierarchical
            else RESULTS_COLUMNS
        )
        check_results(result.results, columns, where=out / "results.tsv")
        produced = self.table(result.results, columns, out / "results.tsv", "results")
        self.sidecar(
            out / "results.json",
            produced,
            {
                "Description": "One row per model and level: cross-validated (out-of-fold) and "
                "test metrics; selected_by_cv marks the model chosen on "
                "cross-validation"
                + (
                    "; step: chain (the hierarchical model) or one of its steps "
                    "(each on its own classes and patients)"
                    if hierarchical
                    else ""
                ),
                **group_extra,
            },
        )


def write_outputs(
    result: TrainingResult,
    *,
    folds,
    selection,
    cohort,
    plan,
    train_rows,
    test_rows,
    step,
    inputs,
    settings: Settings,
    features: Path,
) -> list[Path]:
    """Write every output of a run (model folders, group tables, sidecars) at once.

    ``folds``: the outer fold of each training row (first repeat); ``selection``:
    step (None for a flat model) -> (its CV outcome, its cohort), for
    selected_features.tsv.
    """
    from metcli.io.files import OutputSet
    from metcli.io.predictions import prediction_columns
    from metcli.io.provenance import write_dataset_description

    write_dataset_description(
        result.out_dir,
        name="metcli train-radiomics",
        sources={"features": features if features.is_dir() else features.parent},
        description="radiomics classifiers (ONNX + model cards), cross-validated and test results",
    )
    columns = prediction_columns(cohort.classes)
    # evaluate reads these keys; a multi-class model has no positive class nor threshold
    base = {"classes": list(cohort.classes), "patient_aggregate": "mean"}
    if cohort.positive is not None:
        base["positive_class"] = cohort.positive
    if result.hierarchy is not None:
        base["hierarchy"] = result.hierarchy.record()["groups"]
    group_oof, group_test, models_info = [], [], {}
    stamp_graphs(result, cohort)  # before the cards record the graphs' sha256
    with OutputSet() as outs:
        writer = _Writer(outs, result, cohort, plan, settings, train_rows, test_rows)
        for name, model in result.models.items():
            models_info[name] = writer.model_folder(
                name, model, base, columns, group_oof, group_test
            )
        group_extra = {**base, "selected_model": result.selected, "models": models_info}
        writer.group_predictions(columns, group_oof, group_test, group_extra)
        writer.split(folds)
        writer.selected_features(selection)
        writer.results(group_extra)
        writer.write_sidecars(step, inputs)
    return writer.written
