"""``metcli evaluate``: metrics with honest confidence intervals, model comparisons, plots.

Reads predictions in the format of DESIGN.md (``predictions.tsv``: participant_id,
lesion_id, level, model, set, ``prob_<class>`` for every class, predicted) and the
labels of ``participants.tsv``, and writes for every model and level:

* ``metrics.tsv`` (one row per figure and interval method) and ``metrics.json`` (the
  same figures with the confusion matrices, thresholds and their sources, the
  positive class, and the provenance of the run: it is the sidecar of metrics.tsv);
* plots (PNG) with the numbers behind each (TSV) and a provenance sidecar (JSON):
  ``roc_<level>``, ``calibration_<level>``, ``confusion_<level>``, ``lesion_grid``;
* with ``compare=True``: ``comparisons.tsv`` (paired tests between models) and
  ``comparison_table.tsv`` (models x metrics, as Table 3 of Tharmaseelan et al. 2023).
* ``report.html``: one self-contained page (plots inlined) with all of the above, the
  TRIPOD+AI and CLAIM items, the methods, settings and versions (:mod:`metcli.evaluation.report`).

**The patient is the unit of inference.** Patient-level figures come first. Their 95%
intervals: AUC by DeLong (and by the patient bootstrap), sensitivity and specificity by
Clopper-Pearson, every other figure by the patient bootstrap. Lesions of one patient
are not independent, so every lesion-level interval resamples *patients* (cluster
bootstrap) and the lesion-level AUC also has Obuchowski's clustered variance; no
lesion-level figure treats lesions as independent. The bootstrap is stratified by the
patient's true class and uses percentile intervals; the same seed gives the same
resamples, and two models on the same patients share them (paired tests).

**Predictions.** A JSON sidecar beside ``predictions.tsv`` (``predictions.json``) may give,
at its top level or per model under ``"models": {"<model>": {...}}``:
``classes`` (order), ``positive_class``, ``threshold`` (a number, or
``{"patient": t, "lesion": t}``), ``threshold_source`` (how it was chosen, for example
"youden on out-of-fold predictions") and ``selected`` (true for the model chosen by
cross-validation). Without them, the classes are in the order of the prob_ columns,
the positive class is the second one (``--positive-class`` chooses), and the binary
threshold is 0.5 on ``prob_<positive>`` ("default 0.5"); a case is called positive when
its probability is at least the threshold. Several classes: the predicted class is the
one of highest probability. When a model has lesion rows but no patient rows, the
patient's probabilities are the mean of its lesions' probabilities (reported as
derived).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from metcli.core.errors import InputError, UsageError
from metcli.evaluation.inputs import (LEVELS, SETS, find_prediction_files, load_predictions,
                                      read_labels)
from metcli.evaluation.metrics import (TABLE_COLUMNS, DERIVED_NOTE, LevelResult, compare_pair, compute_level,
                                       level_data)

log = logging.getLogger(__name__)

MIN_BOOTSTRAP = 100
LESION_NOTE = ("lesions of one patient are not independent: every lesion-level interval "
               "resamples patients (cluster bootstrap, stratified by the patient's class) and "
               "the lesion-level AUC also has Obuchowski's (1997) clustered variance; no "
               "lesion-level figure treats lesions as independent")
METRIC_COLUMNS = ("model", "set", "level", "derived_from_lesions", "metric", "class",
                  "estimate", "ci_lower", "ci_upper", "ci_method", "ci_level",
                  "bootstrap_resamples", "n_patients", "n_lesions", "positive_class",
                  "threshold", "threshold_source", "note")
COMPARISON_COLUMNS = ("level", "model_a", "model_b", "metric", "estimate_a", "estimate_b",
                      "difference", "test", "statistic", "p_value", "n_patients", "n_lesions",
                      "note")


# ============================================================================= the run
@dataclass
class EvaluationResult:
    """What :func:`evaluate` did: the files it wrote and a summary per model and level."""

    out_dir: Path
    skipped: bool
    files: list[Path] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)


def _input_roots(inputs: Sequence[Path], labels_path: Path) -> dict[str, Path]:
    roots: dict[str, Path] = {}
    folders = []
    for item in inputs:
        folder = Path(item) if Path(item).is_dir() else Path(item).parent
        if folder.resolve() not in [f.resolve() for f in folders]:
            folders.append(folder)
    for number, folder in enumerate(folders, start=1):
        roots["predictions" if number == 1 else f"predictions{number}"] = folder
    if labels_path.parent.resolve() not in [f.resolve() for f in folders]:
        roots["labels"] = labels_path.parent
    return roots


def evaluate(predictions: Sequence[str | Path], out_dir: str | Path, *, labels: str | Path,
             label_column: str = "primary", level: str = "both",
             positive_class: str | None = None, n_bootstrap: int = 2000, seed: int = 0,
             compare: bool = False, eval_set: str = "test", overwrite: bool = False,
             confidence_level: float = 0.95, draw_plots: bool = True,
             raw: str | Path | None = None, lesions: str | Path | None = None,
             overlay_lesions: int = 3) -> EvaluationResult:
    """Evaluate prediction tables against the labels; write metrics, comparisons and plots.

    Args:
        predictions: ``predictions.tsv`` files, or folders searched for them.
        out_dir: the folder to write (a derivative dataset).
        labels: ``participants.tsv`` (or the folder that holds it).
        label_column: the column of the labels (``primary``).
        level: ``patient``, ``lesion`` or ``both``.
        positive_class: the positive class of binary models (else the sidecar's, else the
            second class).
        n_bootstrap: resamples of the patient bootstrap (at least 100).
        seed: seed of the bootstrap; the same seed gives the same intervals.
        compare: test the models against each other (needs two or more).
        eval_set: the set evaluated (``train``, ``val`` or ``test``).
        overwrite: redo the run even when its outputs are up to date.
        confidence_level: of every interval (0.95).
        draw_plots: write the figures and the tables behind them.
        raw, lesions: the raw dataset (CTs) and split-lesions' output (lesion maps) of the
            evaluated patients: the report then shows their lesion masks on the CT (one PNG
            per patient, ``sub-<id>[_ses-<s>][_ce-<phase>]_desc-lesions_overlay.png``, see
            :func:`metcli.evaluation.plots.overlay_panels`). Give both or neither.
        overlay_lesions: the most lesions shown per patient.

    Raises:
        UsageError: for bad arguments; InputError for bad inputs (nothing is written).
    """
    from metcli.evaluation import plots
    from metcli.evaluation import report
    from metcli.io.bids import sidecar_path
    from metcli.io.files import OutputSet, check_output_not_inside_input, dump_json_to, write_tsv_to
    from metcli.io.provenance import Step, write_dataset_description
    from metcli.io.schemas import validate

    out_dir = Path(out_dir)
    if level not in (*LEVELS, "both"):
        raise UsageError(f"--level {level!r} is not one of patient, lesion, both")
    if eval_set not in SETS:
        raise UsageError(f"--set {eval_set!r} is not one of {', '.join(SETS)}")
    if n_bootstrap < MIN_BOOTSTRAP:
        raise UsageError(f"--bootstrap {n_bootstrap} is too few resamples for a 95% interval",
                         fix=f"use at least {MIN_BOOTSTRAP} (2000 is usual)")
    if not 0.5 <= confidence_level < 1.0:
        raise UsageError(f"confidence level {confidence_level} must lie in [0.5, 1)")
    if not predictions:
        raise UsageError("no predictions given", fix="give one or more predictions.tsv files "
                                                     "or folders")
    if (raw is None) != (lesions is None):
        raise UsageError("--raw and --lesions go together",
                         fix="give the CTs and the lesion maps of the evaluated patients, or "
                             "neither")
    if raw is not None and (isinstance(overlay_lesions, bool) or overlay_lesions < 1):
        raise UsageError(f"--overlay-lesions must be 1 or more, got {overlay_lesions!r}")
    for folder, option in ((raw, "--raw"), (lesions, "--lesions")):
        if folder is not None and not Path(folder).is_dir():
            raise InputError(f"the {option} folder does not exist", path=folder,
                             fix="give the raw dataset and split-lesions' output")
    labels_path, label_map = read_labels(labels, label_column)
    files = find_prediction_files(predictions)
    roots = _input_roots([Path(p) for p in predictions], labels_path)
    # Folders are searched for predictions: the output must not lie inside one.
    check_output_not_inside_input(out_dir, [Path(p) for p in predictions if Path(p).is_dir()])
    models = load_predictions(files, label_map, labels_path, positive_class=positive_class,
                              eval_set=eval_set, label_column=label_column)
    overlay_found: dict[str, dict] = {}
    overlay_missing: dict[str, str] = {}
    if raw is not None:
        if "labels" in roots and roots["labels"].resolve() == Path(raw).resolve():
            del roots["labels"]  # participants.tsv of the raw dataset: name it bids:raw:
        roots.update({"raw": Path(raw), "lesions": Path(lesions)})
        check_output_not_inside_input(out_dir, [Path(raw), Path(lesions)])
        patients = sorted({r["participant_id"] for m in models for r in m.rows})
        overlay_found, overlay_missing = plots.overlay_sources(Path(raw), Path(lesions),
                                                               patients)
        for pid, why in overlay_missing.items():
            log.warning("%s: no lesion overlay (%s)", pid, why)
    if compare and len(models) < 2:
        raise UsageError(f"--compare needs two or more models; found {len(models)} "
                         f"({', '.join(m.name for m in models)})",
                         fix="give more predictions, or leave out --compare")
    wanted_levels = LEVELS if level == "both" else (level,)
    settings = {"level": level, "label_column": label_column, "positive_class": positive_class,
                "n_bootstrap": n_bootstrap, "seed": seed, "compare": compare, "set": eval_set,
                "confidence_level": confidence_level, "plots": draw_plots}
    if raw is not None:
        settings["overlays"] = {"lesions_per_patient": overlay_lesions,
                                "window_hu": list(plots.OVERLAY_WINDOW_HU)}
    step = Step("evaluate", out_dir, roots, settings)
    input_files = list(files) + [sidecar_path(f) for f in files if sidecar_path(f).is_file()]
    input_files.append(labels_path)
    for source in overlay_found.values():
        input_files += [source["ct"], source["map"], source["table"]]
    inputs = step.inputs(input_files)
    metrics_json = out_dir / "metrics.json"
    if not overwrite and step.is_done(metrics_json, inputs):
        log.info("evaluate: outputs are up to date in %s (use --overwrite to redo)", out_dir)
        return EvaluationResult(out_dir=out_dir, skipped=True)

    # ---- compute everything before writing anything
    results: dict[str, list[LevelResult]] = {lv: [] for lv in LEVELS}
    for model in models:
        for lv in wanted_levels:
            data = level_data(model, lv, label_map)
            if data is None:
                if level != "both" or lv == "patient":
                    raise InputError(f"model {model.name} has no {lv} rows in the {eval_set} set",
                                     path=model.path, fix="choose another --level")
                log.info("model %s has no lesion rows: lesion level left out", model.name)
                continue
            log.info("evaluating %s at %s level (%d units)", model.name, lv, data.n_units)
            results[lv].append(compute_level(model, data, n_boot=n_bootstrap, seed=seed,
                                             level_ci=confidence_level))
    ordered = [r for lv in LEVELS for r in results[lv]]
    metric_rows = [row for r in ordered for row in r.rows]
    comparison_rows: list[dict] = []
    table_rows: list[dict] = []
    if compare:
        for lv in LEVELS:
            for a, b in itertools.combinations(results[lv], 2):
                comparison_rows.extend(compare_pair(a, b, n_boot=n_bootstrap, seed=seed))
        table_rows = report.comparison_table(ordered)
    figures = plots.figure_plan(results, confidence_level) if draw_plots else {}
    overlays = _overlay_plan(overlay_found, results, label_map, overlay_lesions)

    # ---- write: dataset description, then every file through one OutputSet
    write_dataset_description(out_dir, name="metcli evaluate", sources=roots,
                              description="metrics, comparisons and plots of predictions")
    produced: dict[Path, Path] = {}
    written: list[Path] = []
    inlined: dict[str, tuple[bytes, str]] = {}
    with OutputSet() as outs:
        for name, (columns, schema, rows, draw, description) in figures.items():
            png, tsv = out_dir / f"{name}.png", out_dir / f"{name}.tsv"
            tmp_tsv = outs.path(tsv)
            write_tsv_to(rows, columns, tmp_tsv, schema=schema, where=tsv)
            tmp_png = outs.path(png)
            draw(rows, tmp_png)
            inlined[name] = (tmp_png.read_bytes(), description)
            pair = {png: tmp_png, tsv: tmp_tsv}
            step.write_sidecar(outs, sidecar_path(png), inputs, pair,
                               extra={"Description": description})
            produced.update(pair)
            written += [png, tsv, sidecar_path(png)]
        if compare:
            for name, columns, schema, rows, description in (
                    ("comparisons", COMPARISON_COLUMNS, "comparisons", comparison_rows,
                     "paired tests between models: DeLong (AUC) and McNemar (accuracy) at "
                     "patient level, patient cluster bootstrap at lesion level"),
                    ("comparison_table", TABLE_COLUMNS, "comparison_table", table_rows,
                     "models x metrics, estimate [95% CI]; selected_by_cv marks the model "
                     "chosen by cross-validation")):
                target = out_dir / f"{name}.tsv"
                tmp = outs.path(target)
                write_tsv_to(rows, columns, tmp, schema=schema, where=target)
                step.write_sidecar(outs, sidecar_path(target), inputs, {target: tmp},
                                   extra={"Description": description})
                produced[target] = tmp
                written += [target, sidecar_path(target)]
        metrics_tsv = out_dir / "metrics.tsv"
        tmp = outs.path(metrics_tsv)
        write_tsv_to(metric_rows, METRIC_COLUMNS, tmp, schema="metrics", where=metrics_tsv)
        produced = {metrics_tsv: tmp, **produced}
        content = _metrics_document(step, models, ordered, comparison_rows, n_bootstrap, seed,
                                    eval_set, confidence_level)
        overlay_figures = []
        for pid, (ent, panels, title, caption) in overlays.items():
            # At the root, beside the other figures (metrics.json lists outputs by name).
            png = out_dir / ent.with_(desc="lesions", suffix="overlay", extension=".png").name
            tmp_png = outs.path(png)
            plots.lesion_overlay_figure(panels, tmp_png, title=title)
            overlay_figures.append((pid, tmp_png.read_bytes(), caption))
            step.write_sidecar(outs, sidecar_path(png), inputs, {png: tmp_png}, extra={
                "Description": "lesion masks on CT for visual quality control: an axial slice "
                               "through each lesion's centroid, abdominal window",
                "Lesions": [plots.overlay_record(p) for p in panels]})
            produced[png] = tmp_png
            written += [png, sidecar_path(png)]
        report_html = out_dir / "report.html"
        tmp = outs.path(report_html)
        report.write_report_to(report.render(
            step.sidecar(inputs, produced, extra=content), figures=inlined,
            table_rows=table_rows,
            overlays=None if raw is None else {"figures": overlay_figures,
                                               "missing": overlay_missing,
                                               "lesions_per_patient": overlay_lesions}), tmp)
        step.write_sidecar(outs, sidecar_path(report_html), inputs, {report_html: tmp},
                           extra={"Description": "report of metcli evaluate (self-contained "
                                                 "HTML); research use only"})
        produced[report_html] = tmp
        written += [report_html, sidecar_path(report_html)]
        doc = step.sidecar(inputs, produced, extra=content)
        validate(doc, "sidecar", where=metrics_json)
        tmp = outs.path(metrics_json)
        dump_json_to(doc, tmp, schema="metrics_json", where=metrics_json)
        written += [metrics_tsv, metrics_json]
    summary = [{"model": r.model.name, "level": r.level, **r.summary} for r in ordered]
    return EvaluationResult(out_dir=out_dir, skipped=False, files=written, summary=summary)


def _overlay_plan(found: dict[str, dict], results: dict[str, list[LevelResult]],
                  label_map: dict[str, str | None], n_lesions: int) -> dict[str, tuple]:
    """``{participant: (entities, panels, title, caption)}`` of the lesion overlays.

    Lesions with a lesion-level prediction come first, annotated with the prediction of
    the model chosen by cross-validation (else the first model).
    """
    from metcli.evaluation import plots
    if not found:
        return {}
    lesion_results = results.get("lesion") or []
    chosen = next((r for r in lesion_results if r.model.selected), None) or \
        (lesion_results[0] if lesion_results else None)
    annotations: dict[str, dict[int, dict]] = {}
    if chosen is not None:
        data = chosen.data
        for i, (pid, lesion) in enumerate(zip(data.participant_ids, data.lesion_ids)):
            if lesion is None or not str(lesion).isdigit():
                continue
            pred = int(data.pred[i])
            annotations.setdefault(pid, {})[int(lesion)] = {
                "predicted": chosen.model.classes[pred],
                "probability": float(data.prob[i, pred]), "correct": bool(pred == data.y[i])}
    plan = {}
    for pid, source in found.items():
        ids = sorted(annotations.get(pid, {})) or None
        panels = plots.overlay_panels(source, lesion_ids=ids, n_lesions=n_lesions,
                                      annotations=annotations.get(pid))
        ent = source["entities"]
        title = f"{pid} (true class: {label_map.get(pid) or 'n/a'})"
        where = ", ".join(x for x in (f"session {ent.ses}" if ent.ses else None,
                                      f"{ent.ce} phase" if ent.ce else None) if x)
        caption = (title + (f", {where}" if where else "")
                   + (f"; lesion-level predictions of {chosen.model.name}"
                      if chosen is not None and pid in annotations else ""))
        plan[pid] = (ent, panels, title, caption)
    return plan


def _metrics_document(step, models, ordered, comparison_rows, n_bootstrap, seed, eval_set,
                      level_ci) -> dict[str, Any]:
    model_docs = []
    for model in models:
        levels = []
        for result in ordered:
            if result.model is not model:
                continue
            data = result.data
            classes = model.classes
            levels.append({
                "level": data.level,
                "derived_from_lesions": data.derived,
                "derivation": DERIVED_NOTE if data.derived else None,
                "n_patients": data.n_patients,
                "n_units": data.n_units,
                "class_counts": {c: int(n) for c, n in
                                 zip(classes, np.bincount(data.y, minlength=len(classes)))},
                "threshold": data.threshold,
                "threshold_source": data.threshold_source,
                "confusion_matrix": {"classes": classes, "rows": "true class",
                                     "columns": "predicted class",
                                     "counts": result.confusion.astype(int).tolist()},
                "mean_predicted": {c: float(data.prob[:, i].mean())
                                   for i, c in enumerate(classes)},
                "interval_note": LESION_NOTE if data.level == "lesion" else
                "AUC by DeLong and by the patient bootstrap; sensitivity and specificity by "
                "Clopper-Pearson; the others by the patient bootstrap",
                "metrics": [{k: row[k] for k in ("metric", "class", "estimate", "ci_lower",
                                                 "ci_upper", "ci_method",
                                                 "bootstrap_resamples", "note")}
                            for row in result.rows],
            })
        model_docs.append({
            "model": model.name,
            "source": step.uri(model.path),
            "set": eval_set,
            "task": "binary" if model.binary else "multiclass",
            "classes": model.classes,
            "positive_class": model.positive_class,
            "positive_class_source": model.positive_source,
            "selected_by_cv": model.selected,
            "levels": levels,
        })
    return {
        "Description": "metrics of metcli evaluate; the sidecar of metrics.tsv",
        "UnitOfInference": "patient",
        "LesionLevel": LESION_NOTE,
        "ConfidenceLevel": level_ci,
        "Bootstrap": {"resamples": n_bootstrap, "seed": seed, "unit": "patient",
                      "stratified_by": "the patient's true class", "interval": "percentile"},
        "Set": eval_set,
        "Models": model_docs,
        "Comparisons": [{k: row.get(k) for k in COMPARISON_COLUMNS} for row in comparison_rows],
    }
