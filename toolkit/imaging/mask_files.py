"""Finding a manual mask and its format: a label image, an RTSTRUCT or a DICOM-SEG.

:func:`find_mask_file` takes the mask file, or a folder holding exactly one mask
file, and tells its format from its name (label images) or its DICOM Modality.
"""

from __future__ import annotations

from pathlib import Path

from metcli.core.errors import InputError, MaskError

FORMAT_LABEL_IMAGE = "label-image"
FORMAT_RTSTRUCT = "RTSTRUCT"
FORMAT_DICOM_SEG = "DICOM-SEG"

#: File name endings read as label images (with SimpleITK).
LABEL_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


# ----------------------------------------------------------------------------- finding the mask
def _is_label_image_name(path: Path) -> bool:
    return path.name.lower().endswith(LABEL_IMAGE_SUFFIXES)


def _dicom_kind(path: Path) -> str | None:
    """``RTSTRUCT``, ``SEG`` or another modality for a DICOM file; None if not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(
            path, stop_before_pixels=True, specific_tags=["Modality", "SOPClassUID"]
        )
    except (InvalidDicomError, OSError, ValueError, TypeError, EOFError, AttributeError):
        return None
    return str(ds.get("Modality", "") or "unknown")


def find_mask_file(mask: str | Path) -> tuple[Path, str]:
    """The mask file and its format (:data:`FORMAT_LABEL_IMAGE`, ``RTSTRUCT``, ``DICOM-SEG``).

    ``mask`` may be the file or a folder holding exactly one mask file (a
    folder of DICOM files with one RTSTRUCT or SEG among them, for example).
    """
    mask = Path(mask)
    if mask.is_dir():
        candidates = []
        for path in sorted(p for p in mask.rglob("*") if p.is_file()):
            if _is_label_image_name(path):
                candidates.append((path, FORMAT_LABEL_IMAGE))
                continue
            kind = _dicom_kind(path)
            if kind == "RTSTRUCT":
                candidates.append((path, FORMAT_RTSTRUCT))
            elif kind == "SEG":
                candidates.append((path, FORMAT_DICOM_SEG))
        if not candidates:
            raise MaskError(
                "the folder holds no RTSTRUCT, DICOM-SEG, NIfTI or NRRD file",
                path=mask,
                fix="give the mask file itself",
            )
        if len(candidates) > 1:
            shown = ", ".join(str(p.relative_to(mask)) for p, _ in candidates[:10])
            raise MaskError(
                f"the folder holds {len(candidates)} mask files ({shown}"
                f"{' ...' if len(candidates) > 10 else ''})",
                path=mask,
                fix="give the mask file itself",
            )
        return candidates[0]
    if not mask.is_file():
        raise InputError("mask not found", path=mask, fix="check the path")
    if _is_label_image_name(mask):
        return mask, FORMAT_LABEL_IMAGE
    kind = _dicom_kind(mask)
    if kind == "RTSTRUCT":
        return mask, FORMAT_RTSTRUCT
    if kind == "SEG":
        return mask, FORMAT_DICOM_SEG
    if kind is not None:
        raise MaskError(
            f"a DICOM {kind} file is not a mask (an RTSTRUCT or a DICOM-SEG is needed)",
            path=mask,
            fix="give the RTSTRUCT or DICOM-SEG file of the segmentation",
        )
    raise MaskError(
        "not a NIfTI, NRRD, RTSTRUCT or DICOM-SEG file",
        path=mask,
        fix="give a label image (.nii.gz, .nii, .nrrd) or a DICOM RTSTRUCT or SEG file",
    )
