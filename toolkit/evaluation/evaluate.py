"""``metcli evaluate``: metrics with honest confidence intervals, model comparisons, plots.

Reads predictions in the format of docs/architecture.md (``predictions.tsv``: participant_id,
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

from metcli.core.errors import InputError, UsageError
from metcli.evaluation.comparisons import compare_pair, comparison_table
from metcli.evaluation.evaluate_run import Computed, EvaluateOptions, EvaluateRun, write_outputs
from metcli.evaluation.inputs import (
    LEVELS,
    SETS,
    ModelPredictions,
    find_prediction_files,
    load_predictions,
    read_labels,
)
from metcli.evaluation.metrics import LevelResult, compute_level, level_data
from metcli.evaluation.study import (
    add_reader_points,
    check_study_options,
    compute_study,
    prepare_study,
    study_options,
)

log = logging.getLogger(__name__)

MIN_BOOTSTRAP = 100


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


def evaluate(
    predictions: Sequence[str | Path],
    out_dir: str | Path,
    *,
    labels: str | Path,
    label_column: str = "primary",
    level: str = "both",
    positive_class: str | None = None,
    n_bootstrap: int = 2000,
    seed: int = 0,
    compare: bool = False,
    eval_set: str = "test",
    overwrite: bool = False,
    confidence_level: float = 0.95,
    draw_plots: bool = True,
    raw: str | Path | None = None,
    lesions: str | Path | None = None,
    overlay_lesions: int = 3,
    cutoffs: str | Path | None = None,
    readers: str | Path | None = None,
    table1_columns: Sequence[str] | None = None,
    collapse: Sequence[str] | dict[str, Sequence[str]] | None = None,
) -> EvaluationResult:
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
            :func:`metcli.evaluation.overlays.overlay_panels`). Give both or neither.
        overlay_lesions: the most lesions shown per patient.
        cutoffs: a JSON file ``{class: cut-off}`` for multi-class models (else the
            predictions' sidecar's): figures at these cut-offs and at argmax
            (:mod:`metcli.evaluation.cutoff_metrics`).
        readers, table1_columns, collapse: a reader study (TSV), Table 1's columns, class
            groups (``["malignant=HCC,metastasis"]``): see :mod:`metcli.evaluation.study`.

    Raises:
        UsageError: for bad arguments; InputError for bad inputs (nothing is written).
    """
    out_dir = Path(out_dir)
    options = EvaluateOptions(
        label_column=label_column,
        level=level,
        positive_class=positive_class,
        n_bootstrap=n_bootstrap,
        seed=seed,
        compare=compare,
        eval_set=eval_set,
        confidence_level=confidence_level,
        draw_plots=draw_plots,
        raw=None if raw is None else Path(raw),
        lesions=None if lesions is None else Path(lesions),
        overlay_lesions=overlay_lesions,
        cutoffs=None if cutoffs is None else Path(cutoffs),
        **study_options(readers, table1_columns, collapse),
    )
    _check_arguments(predictions, options)
    run = _prepare(predictions, out_dir, labels, options)
    if not overwrite and run.step.is_done(run.metrics_json, run.inputs):
        log.info("evaluate: outputs are up to date in %s (use --overwrite to redo)", out_dir)
        return EvaluationResult(out_dir=out_dir, skipped=True)
    computed = _compute(run, options)
    write_outputs(run, computed, options)
    summary = [{"model": r.model.name, "level": r.level, **r.summary} for r in computed.ordered]
    return EvaluationResult(out_dir=out_dir, skipped=False, files=run.written, summary=summary)


def _check_arguments(predictions: Sequence[str | Path], options: EvaluateOptions) -> None:
    """Raise UsageError (or InputError for a missing folder) for bad arguments."""
    if options.level not in (*LEVELS, "both"):
        raise UsageError(f"--level {options.level!r} is not one of patient, lesion, both")
    if options.eval_set not in SETS:
        raise UsageError(f"--set {options.eval_set!r} is not one of {', '.join(SETS)}")
    if options.n_bootstrap < MIN_BOOTSTRAP:
        raise UsageError(
            f"--bootstrap {options.n_bootstrap} is too few resamples for a 95% interval",
            fix=f"use at least {MIN_BOOTSTRAP} (2000 is usual)",
        )
    if not 0.5 <= options.confidence_level < 1.0:
        raise UsageError(f"confidence level {options.confidence_level} must lie in [0.5, 1)")
    check_study_options(options)
    if not predictions:
        raise UsageError(
            "no predictions given", fix="give one or more predictions.tsv files or folders"
        )
    raw, lesions, overlay_lesions = options.raw, options.lesions, options.overlay_lesions
    if (raw is None) != (lesions is None):
        raise UsageError(
            "--raw and --lesions go together",
            fix="give the CTs and the lesion maps of the evaluated patients, or neither",
        )
    if raw is not None and (isinstance(overlay_lesions, bool) or overlay_lesions < 1):
        raise UsageError(f"--overlay-lesions must be 1 or more, got {overlay_lesions!r}")
    for folder, option in ((raw, "--raw"), (lesions, "--lesions")):
        if folder is not None and not Path(folder).is_dir():
            raise InputError(
                f"the {option} folder does not exist",
                path=folder,
                fix="give the raw dataset and split-lesions' output",
            )


def _prepare(
    predictions: Sequence[str | Path], out_dir: Path, labels: str | Path, options: EvaluateOptions
) -> EvaluateRun:
    """Read and check the labels and predictions; find the overlays' scans; set up provenance."""
    from metcli.io.bids import sidecar_path
    from metcli.io.files import check_output_not_inside_input
    from metcli.io.provenance import Step

    labels_path, label_map = read_labels(labels, options.label_column)
    files = find_prediction_files(predictions)
    roots = _input_roots([Path(p) for p in predictions], labels_path)
    # Folders are searched for predictions: the output must not lie inside one.
    check_output_not_inside_input(out_dir, [Path(p) for p in predictions if Path(p).is_dir()])
    models = load_predictions(
        files,
        label_map,
        labels_path,
        positive_class=options.positive_class,
        eval_set=options.eval_set,
        label_column=options.label_column,
    )
    models, label_map, study = prepare_study(options, labels_path, models, label_map, roots)
    found, missing = _find_overlay_sources(options, out_dir, roots, models)
    if options.compare and len(models) < 2:
        raise UsageError(
            f"--compare needs two or more models; found {len(models)} "
            f"({', '.join(m.name for m in models)})",
            fix="give more predictions, or leave out --compare",
        )
    step = Step("evaluate", out_dir, roots, options.settings())
    input_files = list(files) + [sidecar_path(f) for f in files if sidecar_path(f).is_file()]
    input_files += [labels_path, *study.files]
    for source in found.values():
        input_files += [source["ct"], source["map"], source["table"]]
    if options.cutoffs is not None:
        input_files.append(options.cutoffs)
    return EvaluateRun(
        out_dir=out_dir,
        models=models,
        label_map=label_map,
        roots=roots,
        step=step,
        inputs=step.inputs(input_files),
        overlay_found=found,
        overlay_missing=missing,
        study=study,
    )


def _find_overlay_sources(
    options: EvaluateOptions,
    out_dir: Path,
    roots: dict[str, Path],
    models: Sequence[ModelPredictions],
) -> tuple[dict[str, dict], dict[str, str]]:
    """The scans of the lesion overlays (none without ``raw``); adds raw and lesions to roots."""
    from metcli.evaluation.overlays import overlay_sources
    from metcli.io.files import check_output_not_inside_input

    if options.raw is None:
        return {}, {}
    raw, lesions = options.raw, options.lesions
    if "labels" in roots and roots["labels"].resolve() == raw.resolve():
        del roots["labels"]  # participants.tsv of the raw dataset: name it bids:raw:
    roots.update({"raw": raw, "lesions": lesions})
    check_output_not_inside_input(out_dir, [raw, lesions])
    patients = sorted({r["participant_id"] for m in models for r in m.rows})
    found, missing = overlay_sources(raw, lesions, patients)
    for pid, why in missing.items():
        log.warning("%s: no lesion overlay (%s)", pid, why)
    return found, missing


def _compute(run: EvaluateRun, options: EvaluateOptions) -> Computed:
    """Metrics of every model and level, comparisons, figure rows and overlay panels."""
    from metcli.evaluation import plots
    from metcli.evaluation.overlays import overlay_plan

    results: dict[str, list[LevelResult]] = {lv: [] for lv in LEVELS}
    for model in run.models:
        for lv in options.levels:
            data = level_data(model, lv, run.label_map)
            if data is None:
                if options.level != "both" or lv == "patient":
                    raise InputError(
                        f"model {model.name} has no {lv} rows in the {options.eval_set} set",
                        path=model.path,
                        fix="choose another --level",
                    )
                log.info("model %s has no lesion rows: lesion level left out", model.name)
                continue
            log.info("evaluating %s at %s level (%d units)", model.name, lv, data.n_units)
            results[lv].append(
                compute_level(
                    model,
                    data,
                    n_boot=options.n_bootstrap,
                    seed=options.seed,
                    level_ci=options.confidence_level,
                )
            )
    ordered = [r for lv in LEVELS for r in results[lv]]
    comparison_rows: list[dict] = []
    table_rows: list[dict] = []
    if options.compare:
        for lv in LEVELS:
            for a, b in itertools.combinations(results[lv], 2):
                comparison_rows.extend(
                    compare_pair(a, b, n_boot=options.n_bootstrap, seed=options.seed)
                )
        table_rows = comparison_table(ordered)
    figures = plots.figure_plan(results, options.confidence_level) if options.draw_plots else {}
    from metcli.evaluation.cutoff_metrics import cutoff_results

    cutoffs = cutoff_results(run.models, results, options.cutoffs)
    overlays = overlay_plan(run.overlay_found, results, run.label_map, options.overlay_lesions)
    study = compute_study(run.study, results, run.models, run.label_map, options.confidence_level)
    add_reader_points(figures, study)
    return Computed(
        results=results,
        ordered=ordered,
        comparison_rows=comparison_rows,
        table_rows=table_rows,
        figures=figures,
        overlays=overlays,
        cutoffs=cutoffs,
        study=study,
    )
