"""metcli's segmentation labels and the ``dseg.tsv`` label table.

A ``_dseg.nii.gz`` of metcli holds 0 background, 1 liver, 2 lesion. The label
table ``dseg.tsv`` at the root of a segmentation derivative says so, as BIDS
asks for discrete segmentations.
"""

from __future__ import annotations

from pathlib import Path

from metcli.io.files import write_tsv

BACKGROUND, LIVER, LESION = 0, 1, 2
LABELS = {BACKGROUND: "background", LIVER: "liver", LESION: "lesion"}
ABBREVIATIONS = {BACKGROUND: "BG", LIVER: "LIV", LESION: "LES"}

DSEG_SUFFIX = "dseg"


def label_rows() -> list[dict]:
    return [{"index": i, "name": n, "abbreviation": ABBREVIATIONS[i]} for i, n in LABELS.items()]


def write_label_table(out_dir: Path) -> Path:
    """Write ``dseg.tsv`` (index, name, abbreviation) at the root of ``out_dir``."""
    return write_tsv(
        label_rows(),
        ["index", "name", "abbreviation"],
        Path(out_dir) / "dseg.tsv",
        schema="dseg_labels",
    )
