"""One run of ``metcli evaluate``: its options, its inputs and provenance, what it
computed, and the writing of its outputs.

:func:`metcli.evaluation.evaluate.evaluate` reads the inputs and computes every figure
first; :func:`write_outputs` then writes every file through one output set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metcli.evaluation.comparisons import TABLE_COLUMNS
from metcli.evaluation.inputs import LEVELS, ModelPredictions
from metcli.evaluation.metrics import LevelResult
from metcli.evaluation.metrics_json import COMPARISON_COLUMNS, metrics_document

METRIC_COLUMNS = (
    "model",
    "set",
    "level",
    "derived_from_lesions",
    "metric",
    "class",
    "estimate",
    "ci_lower",
    "ci_upper",
    "ci_method",
    "ci_level",
    "bootstrap_resamples",
    "n_patients",
    "n_lesions",
    "positive_class",
    "threshold",
    "threshold_source",
    "note",
)


@dataclass(frozen=True)
class EvaluateOptions:
    """The settings of one evaluate run (the keyword arguments of ``evaluate``)."""

    label_column: str
    level: str
    positive_class: str | None
    n_bootstrap: int
    seed: int
    compare: bool
    eval_set: str
    confidence_level: float
    draw_plots: bool
    raw: Path | None
    lesions: Path | None
    overlay_lesions: int
    cutoffs: Path | None = None  # --cutoffs FILE (metcli.evaluation.cutoff_metrics)
    readers: Path | None = None  # --readers: a reader study (metcli.evaluation.readers)
    table1_columns: tuple[str, ...] | None = None  # None: age, sex, site where present
    collapse: tuple = ()  # --collapse groups (metcli.evaluation.collapse)

    @property
    def levels(self) -> tuple[str, ...]:
        return LEVELS if self.level == "both" else (self.level,)

    def settings(self) -> dict[str, Any]:
        """The settings recorded in the provenance (a change redoes the run)."""
        from metcli.evaluation.overlays import OVERLAY_WINDOW_HU

        settings = {
            "level": self.level,
            "label_column": self.label_column,
            "positive_class": self.positive_class,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "compare": self.compare,
            "set": self.eval_set,
            "confidence_level": self.confidence_level,
            "plots": self.draw_plots,
        }
        for key, value in (  # only when used: earlier runs keep their settings
            ("collapse", [[n, list(m)] for n, m in self.collapse] or None),
            ("readers", self.readers is not None or None),
            ("table1_columns", None if self.table1_columns is None else list(self.table1_columns)),
        ):
            if value is not None:
                settings[key] = value
        if self.cutoffs is not None:
            settings["cutoffs"] = Path(self.cutoffs).name
        if self.raw is not None:
            settings["overlays"] = {
                "lesions_per_patient": self.overlay_lesions,
                "window_hu": list(OVERLAY_WINDOW_HU),
            }
        return settings


@dataclass
class EvaluateRun:
    """The inputs and provenance of one evaluate run, and the files it has produced."""

    out_dir: Path
    models: list[ModelPredictions]
    label_map: dict[str, str | None]
    roots: dict[str, Path]
    step: Any  # metcli.io.provenance.Step
    inputs: list
    overlay_found: dict[str, dict]
    overlay_missing: dict[str, str]
    produced: dict[Path, Path] = field(default_factory=dict)  # output -> its temporary file
    written: list[Path] = field(default_factory=list)
    study: Any = None  # metcli.evaluation.study.StudyInputs

    @property
    def metrics_json(self) -> Path:
        return self.out_dir / "metrics.json"

    def write_sidecar(self, outs, target: Path, pair: dict[Path, Path], extra: dict) -> None:
        """Write ``target``'s sidecar and record ``pair`` (outputs -> temporary files)."""
        from metcli.io.bids import sidecar_path

        self.step.write_sidecar(outs, sidecar_path(target), self.inputs, pair, extra=extra)
        self.produced.update(pair)


@dataclass
class Computed:
    """Everything ``evaluate`` writes, computed before anything is written."""

    results: dict[str, list[LevelResult]]
    ordered: list[LevelResult]
    comparison_rows: list[dict]
    table_rows: list[dict]
    figures: dict[str, tuple]
    overlays: dict[str, tuple]
    cutoffs: list[dict] = field(default_factory=list)  # metcli.evaluation.cutoff_metrics
    study: Any = None  # metcli.evaluation.study.StudyResults


def write_outputs(run: EvaluateRun, computed: Computed, options: EvaluateOptions) -> None:
    """The dataset description, then every file through one OutputSet."""
    from metcli.evaluation.study import study_document, write_study_outputs
    from metcli.io.files import OutputSet, dump_json_to, write_tsv_to
    from metcli.io.provenance import write_dataset_description
    from metcli.io.schemas import validate

    write_dataset_description(
        run.out_dir,
        name="metcli evaluate",
        sources=run.roots,
        description="metrics, comparisons and plots of predictions",
    )
    with OutputSet() as outs:
        inlined = _write_figures(run, outs, computed.figures)
        if options.compare:
            _write_comparisons(run, outs, computed)
        write_study_outputs(run, outs, computed.study)
        metrics_tsv = run.out_dir / "metrics.tsv"
        tmp = outs.path(metrics_tsv)
        metric_rows = [row for r in computed.ordered for row in r.rows]
        write_tsv_to(metric_rows, METRIC_COLUMNS, tmp, schema="metrics", where=metrics_tsv)
        run.produced = {metrics_tsv: tmp, **run.produced}
        content = metrics_document(
            run.step,
            run.models,
            computed.ordered,
            computed.comparison_rows,
            options.n_bootstrap,
            options.seed,
            options.eval_set,
            options.confidence_level,
        )
        if computed.cutoffs:  # multi-class models: figures at the cut-offs and at argmax
            from metcli.evaluation.cutoff_metrics import write_cutoff_metrics

            content["Cutoffs"] = write_cutoff_metrics(run, outs, computed.cutoffs)
        content.update(study_document(computed.study))
        overlay_figures = _write_overlays(run, outs, computed.overlays)
        _write_report(
            run,
            outs,
            content,
            inlined,
            computed.table_rows,
            None
            if options.raw is None
            else {
                "figures": overlay_figures,
                "missing": run.overlay_missing,
                "lesions_per_patient": options.overlay_lesions,
            },
        )
        doc = run.step.sidecar(run.inputs, run.produced, extra=content)
        validate(doc, "sidecar", where=run.metrics_json)
        tmp = outs.path(run.metrics_json)
        dump_json_to(doc, tmp, schema="metrics_json", where=run.metrics_json)
        run.written += [metrics_tsv, run.metrics_json]


def _write_figures(
    run: EvaluateRun, outs, figures: dict[str, tuple]
) -> dict[str, tuple[bytes, str]]:
    """Each figure's PNG, the TSV behind it and its sidecar; returns the PNGs to inline."""
    from metcli.io.bids import sidecar_path
    from metcli.io.files import write_tsv_to

    inlined: dict[str, tuple[bytes, str]] = {}
    for name, (columns, schema, rows, draw, description) in figures.items():
        png, tsv = run.out_dir / f"{name}.png", run.out_dir / f"{name}.tsv"
        tmp_tsv = outs.path(tsv)
        write_tsv_to(rows, columns, tmp_tsv, schema=schema, where=tsv)
        tmp_png = outs.path(png)
        draw(rows, tmp_png)
        inlined[name] = (tmp_png.read_bytes(), description)
        run.write_sidecar(
            outs, png, {png: tmp_png, tsv: tmp_tsv}, extra={"Description": description}
        )
        run.written += [png, tsv, sidecar_path(png)]
    return inlined


def _write_comparisons(run: EvaluateRun, outs, computed: Computed) -> None:
    """``comparisons.tsv`` and ``comparison_table.tsv`` with their sidecars."""
    from metcli.io.bids import sidecar_path
    from metcli.io.files import write_tsv_to

    for name, columns, schema, rows, description in (
        (
            "comparisons",
            COMPARISON_COLUMNS,
            "comparisons",
            computed.comparison_rows,
            "paired tests between models: DeLong (AUC) and McNemar (accuracy) at "
            "patient level, patient cluster bootstrap at lesion level",
        ),
        (
            "comparison_table",
            TABLE_COLUMNS,
            "comparison_table",
            computed.table_rows,
            "models x metrics, estimate [95% CI]; selected_by_cv marks the model "
            "chosen by cross-validation",
        ),
    ):
        target = run.out_dir / f"{name}.tsv"
        tmp = outs.path(target)
        write_tsv_to(rows, columns, tmp, schema=schema, where=target)
        run.write_sidecar(outs, target, {target: tmp}, extra={"Description": description})
        run.written += [target, sidecar_path(target)]


def _write_overlays(run: EvaluateRun, outs, overlays: dict[str, tuple]) -> list[tuple]:
    """One lesion-overlay PNG per participant with its sidecar; returns them for the report."""
    from metcli.evaluation.overlays import lesion_overlay_figure, overlay_record
    from metcli.io.bids import sidecar_path

    overlay_figures = []
    for pid, (ent, panels, title, caption) in overlays.items():
        # At the root, beside the other figures (metrics.json lists outputs by name).
        png = run.out_dir / ent.with_(desc="lesions", suffix="overlay", extension=".png").name
        tmp_png = outs.path(png)
        lesion_overlay_figure(panels, tmp_png, title=title)
        overlay_figures.append((pid, tmp_png.read_bytes(), caption))
        run.write_sidecar(
            outs,
            png,
            {png: tmp_png},
            extra={
                "Description": "lesion masks on CT for visual quality control: an axial slice "
                "through each lesion's centroid, abdominal window",
                "Lesions": [overlay_record(p) for p in panels],
            },
        )
        run.written += [png, sidecar_path(png)]
    return overlay_figures


def _write_report(
    run: EvaluateRun,
    outs,
    content: dict[str, Any],
    inlined: dict[str, tuple],
    table_rows: list[dict],
    overlays: dict[str, Any] | None,
) -> None:
    """``report.html`` (self-contained) and its sidecar."""
    from metcli.evaluation import report
    from metcli.io.bids import sidecar_path

    report_html = run.out_dir / "report.html"
    tmp = outs.path(report_html)
    report.write_report_to(
        report.render(
            run.step.sidecar(run.inputs, run.produced, extra=content),
            figures=inlined,
            table_rows=table_rows,
            overlays=overlays,
        ),
        tmp,
    )
    run.write_sidecar(
        outs,
        report_html,
        {report_html: tmp},
        extra={"Description": "report of metcli evaluate (self-contained HTML); research use only"},
    )
    run.written += [report_html, sidecar_path(report_html)]
