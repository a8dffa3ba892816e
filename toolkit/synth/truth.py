"""The truth tables of a synthetic cohort: each participant's lesions as the generator
placed them (``derivatives/truth/.../..._lesions.tsv``) and the cohort's ``lesions.tsv``,
schema ``synth_lesions``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from metcli.core.errors import InputError
from metcli.io.bids import sidecar_path
from metcli.io.files import NA, OutputSet, read_tsv, write_tsv_to

#: Columns of the truth table (schemas/synth_lesions.schema.json).
TRUTH_COLUMNS = (
    "participant_id",
    "lesion_id",
    "primary",
    "centre_x_mm",
    "centre_y_mm",
    "centre_z_mm",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "radius_mm",
    "semi_axis_a_mm",
    "semi_axis_b_mm",
    "semi_axis_c_mm",
    "voxels",
    "volume_mm3",
    "equivalent_diameter_mm",
    "lesion_hu",
    "texture_sd_hu",
    "patient_offset_hu",
)
#: The almss scenario's truth table adds each phase's designed lesion mean.
ALMSS_TRUTH_COLUMNS = TRUTH_COLUMNS + tuple(
    f"lesion_hu_{phase}" for phase in ("native", "arterial", "portal", "delayed")
)
#: The MR world's truth table (truth on the T2w grid): the HU columns are n/a, and each
#: lesion's type, pattern, designed T2w signal (relative to the patient's liver) and ADC
#: (mm2/s), and the patient's liver ADC, are added.
MRI_TRUTH_COLUMNS = TRUTH_COLUMNS + (
    "lesion_type",
    "pattern",
    "t2_relative",
    "adc_mm2s",
    "liver_adc_mm2s",
)
_INT_COLUMNS = ("lesion_id", "voxels")
_TEXT_COLUMNS = ("participant_id", "primary", "lesion_type", "pattern")


def read_truth_lesions(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a truth table (per participant or the cohort's ``lesions.tsv``), typed."""
    rows = read_tsv(path, required=TRUTH_COLUMNS)
    out = []
    for number, row in enumerate(rows, start=2):
        typed: dict[str, Any] = {}
        for key, value in row.items():
            try:
                if key in _TEXT_COLUMNS:
                    typed[key] = value
                elif value == NA:
                    typed[key] = None
                elif key in _INT_COLUMNS:
                    typed[key] = int(value)
                else:
                    typed[key] = float(value)
            except ValueError:
                raise InputError(
                    f"line {number}: {key} {value!r} is not a number",
                    path=path,
                    fix="write the table again with metcli synth",
                ) from None
        out.append(typed)
    return out


def write_cohort_table(
    step, truth_dir: Path, tables: Sequence[Path], columns: Sequence[str] = TRUTH_COLUMNS
) -> None:
    """``derivatives/truth/lesions.tsv``: the per-participant ``tables`` (those that exist),
    one after the other, with ``columns``."""
    tables = [t for t in tables if t.is_file()]
    path = truth_dir / "lesions.tsv"
    inputs = step.inputs(tables)
    if step.is_done(sidecar_path(path), inputs):
        return
    rows = [row for table in tables for row in read_truth_lesions(table)]
    with OutputSet() as outs:
        tmp = outs.path(path)
        write_tsv_to(rows, columns, tmp, schema="synth_lesions", where=path)
        step.write_sidecar(outs, sidecar_path(path), inputs, {path: tmp}, extra={"Synthetic": True})
