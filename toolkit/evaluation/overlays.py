"""Lesion overlays of ``metcli evaluate``: lesion masks on CT for visual quality control.

One PNG per participant: axial slices through the centroids of its lesions in the
abdominal window, with the lesion contours and, where known, the predicted class.
Figures are drawn on matplotlib's Agg canvas (:mod:`metcli.evaluation.canvas`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from metcli.evaluation.canvas import agg_figure, save_png

if TYPE_CHECKING:  # pragma: no cover
    from metcli.evaluation.metrics import LevelResult

#: Abdominal window of the overlays (Tharmaseelan et al. 2023): width and level in HU.
OVERLAY_WINDOW_HU = (330.0, 10.0)
#: Half the side of an overlay's crop: at least this (mm), or 1.5 lesion diameters.
OVERLAY_MIN_HALF_MM = 30.0
OVERLAY_PREFERRED_PHASE = "portal"


def overlay_sources(
    raw_dir: Path, lesions_dir: Path, participant_ids: Sequence[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The CT, lesion map and lesion table to draw for each participant (``sub-<id>``).

    One acquisition per participant: the portal-venous one where there are several
    lesion maps, else the first (by session and phase). Returns ``(found, missing)``:
    ``found[pid]`` holds ``entities``, ``ct``, ``map`` and ``table`` (paths);
    ``missing[pid]`` says what is not there.
    """
    from metcli.io.bids import derivative_path, find_files

    found: dict[str, dict[str, Any]] = {}
    missing: dict[str, str] = {}
    for pid in participant_ids:
        label = pid[len("sub-") :] if pid.startswith("sub-") else pid
        maps = find_files(Path(lesions_dir), suffix="dseg", desc="lesions", participants=[label])
        if not maps:
            missing[pid] = "no lesion map (_desc-lesions_dseg.nii.gz) in the lesions folder"
            continue
        chosen = next((m for m in maps if m.entities.ce == OVERLAY_PREFERRED_PHASE), maps[0])
        ent = chosen.entities.with_(desc=None)
        ct = Path(raw_dir) / ent.with_(suffix="ct", extension=".nii.gz").relpath()
        table = derivative_path(
            Path(lesions_dir), ent, desc="lesions", suffix="dseg", extension=".tsv"
        )
        if not ct.is_file():
            missing[pid] = f"no CT {ct.name} in the raw folder"
        elif not table.is_file():
            missing[pid] = f"no lesion table {table.name} beside the lesion map"
        else:
            found[pid] = {"entities": ent, "ct": ct, "map": chosen.path, "table": table}
    return found, missing


def overlay_panels(
    source: dict[str, Any],
    *,
    lesion_ids: Sequence[int] | None = None,
    n_lesions: int = 3,
    annotations: dict[int, dict] | None = None,
) -> list[dict[str, Any]]:
    """Axial slices through the centroids of up to ``n_lesions`` lesions of one scan.

    ``lesion_ids`` lists the lesions to show first (for example those that have
    predictions); the other kept lesions of the table follow by id (largest first).
    Each panel holds the cropped CT slice, this lesion's mask, the other lesions'
    mask and the numbers behind it (id, diameter, slice index, centroid, window); the
    slice is displayed in radiological convention (patient's right on the left,
    anterior up). The lesion map is matched to the CT in physical space
    (:func:`metcli.imaging.geometry.to_reference_grid`; another grid is a GeometryError).
    """
    import SimpleITK as sitk

    from metcli.imaging.geometry import to_reference_grid
    from metcli.io.files import read_image
    from metcli.lesions.tables import read_lesion_table

    ct_image = read_image(source["ct"], what="CT")
    map_image = to_reference_grid(
        read_image(source["map"], what="lesion map"),
        ct_image,
        image_path=source["map"],
        reference_path=source["ct"],
    )
    # LPS orientation: array [k, j, i] = [inferior->superior, anterior->posterior,
    # right->left], so a slice array[k] shows the patient as a radiologist reads it.
    ct_image = sitk.DICOMOrient(ct_image, "LPS")
    map_image = sitk.DICOMOrient(map_image, "LPS")
    ct = sitk.GetArrayViewFromImage(ct_image)
    ids = sitk.GetArrayViewFromImage(map_image)
    spacing_x, spacing_y, spacing_z = map_image.GetSpacing()
    rows = {int(r["index"]): r for r in read_lesion_table(source["table"]) if r["kept"]}
    present = set(np.unique(ids[ids > 0]).tolist())
    first = [int(i) for i in lesion_ids or ()]
    order = first + [i for i in sorted(rows) if i not in first]
    chosen = [i for i in order if i in rows and i in present][: max(0, int(n_lesions))]
    panels = []
    for lesion in chosen:
        row = rows[lesion]
        centroid = (row["centroid_x_mm"], row["centroid_y_mm"], row["centroid_z_mm"])
        i, j, k = map_image.TransformPhysicalPointToIndex(centroid)
        k = int(np.clip(k, 0, ids.shape[0] - 1))
        if not np.any(ids[k] == lesion):  # a centroid outside a curved lesion's slices
            k = int(np.argmax((ids == lesion).sum(axis=(1, 2))))
        diameter = float(row["longest_axial_diameter_mm"])
        half = max(OVERLAY_MIN_HALF_MM, 1.5 * diameter)
        half_i, half_j = int(round(half / spacing_x)), int(round(half / spacing_y))
        i = int(np.clip(i, 0, ids.shape[2] - 1))
        j = int(np.clip(j, 0, ids.shape[1] - 1))
        rows_slice = slice(max(0, j - half_j), min(ids.shape[1], j + half_j + 1))
        cols_slice = slice(max(0, i - half_i), min(ids.shape[2], i + half_i + 1))
        labels = np.asarray(ids[k, rows_slice, cols_slice])
        annotation = (annotations or {}).get(lesion, {})
        panels.append(
            {
                "lesion_id": lesion,
                "diameter_mm": diameter,
                "slice_index": k,
                "slice_z_mm": float(map_image.TransformIndexToPhysicalPoint((0, 0, k))[2]),
                "centroid_mm": [float(c) for c in centroid],
                "spacing_mm": [float(spacing_y), float(spacing_x)],
                "window_hu": list(OVERLAY_WINDOW_HU),
                "ct": np.asarray(ct[k, rows_slice, cols_slice], dtype=float),
                "lesion": labels == lesion,
                "others": (labels > 0) & (labels != lesion),
                "predicted": annotation.get("predicted"),
                "probability": annotation.get("probability"),
                "correct": annotation.get("correct"),
            }
        )
    return panels


def overlay_record(panel: dict[str, Any]) -> dict[str, Any]:
    """The numbers behind one overlay panel (no pixel data), for its sidecar."""
    return {k: v for k, v in panel.items() if k not in ("ct", "lesion", "others")}


def lesion_overlay_figure(
    panels: Sequence[dict[str, Any]], target: Path, *, title: str = "Lesions on CT"
) -> None:
    """One row of panels: CT in the abdominal window, the lesion's contour (yellow), the
    other lesions' contours (cyan), a 10 mm scale bar and the predicted class if known."""
    import textwrap

    width, level = OVERLAY_WINDOW_HU
    n = max(1, len(panels))
    figure = agg_figure(2.7 * n, 3.5, layout="constrained")
    for position, panel in enumerate(panels, start=1):
        ax = figure.add_subplot(1, n, position)
        row_mm, col_mm = panel["spacing_mm"]
        ax.imshow(
            panel["ct"],
            cmap="gray",
            vmin=level - width / 2,
            vmax=level + width / 2,
            aspect=row_mm / col_mm,
            interpolation="nearest",
        )
        if panel["others"].any():
            ax.contour(
                panel["others"].astype(float), levels=[0.5], colors="#00d5ff", linewidths=0.8
            )
        if panel["lesion"].any():
            ax.contour(
                panel["lesion"].astype(float), levels=[0.5], colors="#ffd400", linewidths=1.4
            )
        height = panel["ct"].shape[0]
        bar = 10.0 / col_mm
        ax.plot([2, 2 + bar], [height - 3, height - 3], color="white", linewidth=2)
        ax.text(
            2 + bar / 2, height - 5, "10 mm", color="white", fontsize=6, ha="center", va="bottom"
        )
        ax.set_xticks([])
        ax.set_yticks([])
        heading = (
            f"lesion {panel['lesion_id']}, {panel['diameter_mm']:.1f} mm\n"
            f"slice {panel['slice_index']} (z {panel['slice_z_mm']:.1f} mm)"
        )
        ax.set_title(heading, fontsize=7.5)
        if panel.get("predicted") is not None:
            verdict = (
                ""
                if panel.get("correct") is None
                else (" - right" if panel["correct"] else " - WRONG")
            )
            probability = panel.get("probability")
            text = (
                f"predicted {panel['predicted']}"
                + (f" ({probability:.2f})" if probability is not None else "")
                + verdict
            )
            ax.set_xlabel(
                text,
                fontsize=7,
                color="black"
                if panel.get("correct") is None
                else ("#006400" if panel["correct"] else "#b00000"),
            )
    if not panels:
        ax = figure.add_subplot(1, 1, 1)
        ax.axis("off")
        ax.text(0.5, 0.5, "no lesion to show", ha="center", va="center")
    figure.suptitle("\n".join(textwrap.wrap(title, width=34 * n)), fontsize=8.5)
    save_png(figure, target)


def overlay_plan(
    found: dict[str, dict],
    results: dict[str, list["LevelResult"]],
    label_map: dict[str, str | None],
    n_lesions: int,
) -> dict[str, tuple]:
    """``{participant: (entities, panels, title, caption)}`` of the lesion overlays.

    Lesions with a lesion-level prediction come first, annotated with the prediction of
    the model chosen by cross-validation (else the first model).
    """
    if not found:
        return {}
    lesion_results = results.get("lesion") or []
    chosen = next((r for r in lesion_results if r.model.selected), None) or (
        lesion_results[0] if lesion_results else None
    )
    annotations: dict[str, dict[int, dict]] = {}
    if chosen is not None:
        data = chosen.data
        for i, (pid, lesion) in enumerate(zip(data.participant_ids, data.lesion_ids)):
            if lesion is None or not str(lesion).isdigit():
                continue
            pred = int(data.pred[i])
            annotations.setdefault(pid, {})[int(lesion)] = {
                "predicted": chosen.model.classes[pred],
                "probability": float(data.prob[i, pred]),
                "correct": bool(pred == data.y[i]),
            }
    plan = {}
    for pid, source in found.items():
        ids = sorted(annotations.get(pid, {})) or None
        panels = overlay_panels(
            source, lesion_ids=ids, n_lesions=n_lesions, annotations=annotations.get(pid)
        )
        ent = source["entities"]
        title = f"{pid} (true class: {label_map.get(pid) or 'n/a'})"
        where = ", ".join(
            x
            for x in (
                f"session {ent.ses}" if ent.ses else None,
                f"{ent.ce} phase" if ent.ce else None,
            )
            if x
        )
        caption = (
            title
            + (f", {where}" if where else "")
            + (
                f"; lesion-level predictions of {chosen.model.name}"
                if chosen is not None and pid in annotations
                else ""
            )
        )
        plan[pid] = (ent, panels, title, caption)
    return plan
