"""Reading and writing files: atomically, with clear errors.

Every file metcli writes goes first to a temporary file in the same folder and
is renamed into place when complete, so that a killed run never leaves a
partial file under the final name. Several files that belong together (an
image, its table, its sidecar) are written through one :class:`OutputSet`,
which renames them all only when every one was written, the sidecar last.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from metcli.core.errors import ImageError, InputError, OutputError
from metcli.io.bids import split_extension
from metcli.io.integrity import check_complete
from metcli.io.oserrors import c_errors_refused, is_output_fault, output_error
from metcli.io.temporaries import owner_tag, remove_stale_temporaries

log = logging.getLogger(__name__)

NA = "n/a"


# ----------------------------------------------------------------------------- atomic writes
def _temp_name(dest: Path) -> Path:
    """A new empty temporary file beside ``dest`` (its folder is created if needed)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create the folder ({exc.strerror})",
            path=dest.parent,
            fix="choose an output folder you can write to",
        ) from None
    try:
        _stem, ext = split_extension(dest.name)
    except InputError:
        ext = dest.suffix
    remove_stale_temporaries(dest)
    try:
        fd, name = tempfile.mkstemp(
            prefix=f".{dest.name}.{owner_tag()}.", suffix=f".part{ext}", dir=dest.parent
        )
    except OSError as exc:
        if is_output_fault(exc):
            raise output_error(exc, dest.parent) from None
        raise
    try:
        # mkstemp creates the file 0600; give it the permissions a plain open() would.
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return Path(name)


def _umask() -> int:
    """The process umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _replace(tmp: Path, dest: Path) -> None:
    """Rename a finished temporary file to its output name; a folder in the way is an
    :class:`OutputError` naming it."""
    try:
        os.replace(tmp, dest)
    except IsADirectoryError:
        raise OutputError(
            "a folder stands where this output file goes",
            path=dest,
            fix="move or remove that folder, or give another output folder",
        ) from None


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it to ``dest`` on success.

    The temporary file keeps the destination's extension (so writers that choose
    the format by extension, like SimpleITK, work). On any exception the
    temporary file is removed and ``dest`` is left as it was.
    """
    dest = Path(dest)
    tmp = _temp_name(dest)
    try:
        yield tmp
        _replace(tmp, dest)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if is_output_fault(exc):
            raise output_error(exc, dest.parent) from None
        raise


class OutputSet:
    """Files written together: all appear, or none does.

    Use :meth:`path` to get a temporary path for each final path, write to it,
    and call :meth:`commit` (the context manager does it on success). Files are
    renamed in the order they were added, so add the sidecar last: a run killed
    between two renames leaves outputs whose sidecar is missing or stale, which
    the skip rule treats as not done.
    """

    def __init__(self):
        self._pending: list[tuple[Path, Path]] = []

    def path(self, dest: str | Path) -> Path:
        dest = Path(dest)
        tmp = _temp_name(dest)
        self._pending.append((tmp, dest))
        return tmp

    def commit(self) -> list[Path]:
        done = []
        for tmp, dest in self._pending:
            _replace(tmp, dest)
            done.append(dest)
        self._pending = []
        return done

    def discard(self) -> None:
        for tmp, _dest in self._pending:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self._pending = []

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException as error:
                self.discard()
                if is_output_fault(error):
                    raise output_error(error, self._folder()) from None
                raise
        else:
            folder = self._folder()
            self.discard()
            if is_output_fault(exc):
                raise output_error(exc, folder) from None

    def _folder(self) -> Path:
        """The folder of the outputs (their common parent)."""
        if not self._pending:
            return Path(".")
        return Path(os.path.commonpath([str(dest.parent) for _tmp, dest in self._pending]))


# ----------------------------------------------------------------------------- hashing
def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-serialisable object, independent of key order."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------- JSON
def write_json(obj: Any, path: str | Path, *, schema: str | None = None) -> Path:
    """Write ``obj`` as indented JSON, atomically, after checking it against ``schema``."""
    if schema is not None:
        from metcli.io.schemas import validate

        validate(obj, schema, where=path)
    path = Path(path)
    with atomic_path(path) as tmp:
        _dump_json(obj, tmp)
    return path


def _dump_json(obj: Any, target: Path) -> None:
    with open(target, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2, sort_keys=False, allow_nan=False)
        handle.write("\n")


def dump_json_to(obj: Any, target: Path, *, schema: str | None = None, where=None) -> None:
    """Write JSON to an already-chosen (temporary) path, checking the schema first."""
    if schema is not None:
        from metcli.io.schemas import validate

        validate(obj, schema, where=where or target)
    _dump_json(obj, target)


def read_json(path: str | Path, *, schema: str | None = None) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path=path, fix="check the path")
    try:
        with open(path, encoding="utf-8") as handle:
            obj = json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"not valid JSON ({exc})", path=path, fix="repair the file or write it again"
        ) from None
    if schema is not None:
        from metcli.io.schemas import validate

        validate(obj, schema, where=path)
    return obj


# ----------------------------------------------------------------------------- TSV
def format_value(value: Any) -> str:
    """A cell as BIDS writes it: ``n/a`` for missing values, floats to 10 digits."""
    if value is None:
        return NA
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return NA
        if math.isinf(value):
            raise ValueError("infinite values cannot be written to a table")
        return format(value, ".10g")
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return format_value(value.item())
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(v) for v in value)
    text = str(value)
    if "\t" in text or "\n" in text:
        raise ValueError(f"a table cell cannot hold tabs or line breaks: {text!r}")
    return text


def tsv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    buffer.write("\t".join(columns) + "\n")
    for row in rows:
        buffer.write("\t".join(format_value(row.get(col)) for col in columns) + "\n")
    return buffer.getvalue()


def write_tsv_to(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    target: Path,
    *,
    schema: str | None = None,
    where=None,
) -> None:
    """Write a table to an already-chosen (temporary) path, rows checked first."""
    if schema is not None:
        from metcli.io.schemas import validate_rows

        validate_rows(rows, columns, schema, where=where or target)
    text = tsv_text(rows, columns)
    with open(target, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


def write_tsv(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    path: str | Path,
    *,
    schema: str | None = None,
) -> Path:
    """Write a table atomically after checking every row against ``schema``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        write_tsv_to(rows, columns, tmp, schema=schema, where=path)
    return path


def read_tsv(path: str | Path, *, required: Iterable[str] = ()) -> list[dict[str, str]]:
    """Rows of a TSV file as dictionaries of strings (``n/a`` kept as text)."""
    return read_table(path, required=required)


def read_table(
    path: str | Path, *, required: Iterable[str] = (), delimiter: str = "\t"
) -> list[dict[str, str]]:
    """Rows of a TSV file, or of a CSV file with ``delimiter=","`` (quoted cells allowed),
    as dictionaries of strings."""
    path = Path(path)
    kind = "tab-separated" if delimiter == "\t" else "comma-separated"
    if not path.is_file():
        raise InputError("file not found", path=path, fix="check the path")
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
            reader = csv.DictReader(handle, delimiter=delimiter, quoting=quoting)
            if reader.fieldnames is None:
                raise InputError(
                    "the table is empty (no header line)",
                    path=path,
                    fix=f"write a {kind} header line",
                )
            header = [h.strip() for h in reader.fieldnames]
            rows = []
            for number, row in enumerate(reader, start=2):
                if None in row or any(v is None for v in row.values()):
                    raise InputError(
                        f"line {number} has a different number of cells than the header",
                        path=path,
                        fix="one cell per column, separated by single "
                        + ("tabs" if delimiter == "\t" else "commas"),
                    )
                rows.append(
                    {k.strip(): (v.strip() if v is not None else v) for k, v in row.items()}
                )
    except UnicodeDecodeError:
        raise InputError(
            "not a UTF-8 text table", path=path, fix=f"save it as {kind} UTF-8 text"
        ) from None
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(
            f"missing column(s) {', '.join(missing)} (has: {', '.join(header)})",
            path=path,
            fix="add the column(s) to the header line",
        )
    return rows


# ----------------------------------------------------------------------------- images
def read_image(path: str | Path, *, what: str = "image", pixel_type=None, dims: int = 3):
    """Read a NIfTI/NRRD image with SimpleITK, refusing corrupt or non-3D files.

    A file cut short or damaged, which SimpleITK would read with zeros in place of
    what is missing, is refused first (:func:`metcli.io.integrity.check_complete`).
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{what} not found", path=path, fix="check the path")
    check_complete(path, what)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        image = reader.Execute()
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise ImageError(
            f"cannot read the {what} ({_short(reason)})",
            path=path,
            fix="check that the file is a complete NIfTI or NRRD image "
            "(re-export or copy it again)",
        ) from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageError(
            f"the {what} has {image.GetNumberOfComponentsPerPixel()} components "
            "per voxel; a scalar image is needed",
            path=path,
            fix="export a single-channel image",
        )
    if image.GetDimension() != dims:
        if image.GetDimension() == 4 and image.GetSize()[3] == 1:
            image = image[:, :, :, 0]
        else:
            raise ImageError(
                f"the {what} is {image.GetDimension()}D "
                f"(size {'x'.join(map(str, image.GetSize()))}); a {dims}D volume is "
                "needed",
                path=path,
                fix=f"give a {dims}D volume",
            )
    if dims == 3 and min(image.GetSize()) < 1:
        raise ImageError(f"the {what} is empty", path=path, fix="give a non-empty volume")
    _refuse_non_finite(path, image, what)
    if pixel_type is not None:
        image = sitk.Cast(image, pixel_type)
    return image


def _refuse_non_finite(path: Path, image, what: str) -> None:
    """Refuse an image whose stored floating-point values include NaN or infinity.

    SimpleITK's NIfTI reader turns NaN and infinite voxels into 0 (water in a CT),
    so for NIfTI they are looked for in the file itself with nibabel; integer
    files cannot hold them and are not read again. Other formats (NRRD) keep
    them, and the array SimpleITK read is checked.
    """
    import numpy as np
    import SimpleITK as sitk

    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            stored = nib.load(str(path))
            if np.dtype(stored.get_data_dtype()).kind not in "fc":
                return
            data = np.asanyarray(stored.dataobj)
        except Exception:  # noqa: BLE001 - SimpleITK accepted the file; keep its reading
            return
    else:
        data = sitk.GetArrayViewFromImage(image)
        if data.dtype.kind not in "fc":
            return
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise ImageError(
            f"the {what} has {bad} voxel(s) that are NaN or infinite"
            + (
                " (SimpleITK would read them as 0)"
                if path.name.endswith((".nii", ".nii.gz"))
                else ""
            ),
            path=path,
            fix="convert it again from the source, or replace those voxels",
        )


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_image_to(image, target: Path, *, compress: bool = True) -> None:
    import SimpleITK as sitk

    with c_errors_refused(target):
        sitk.WriteImage(image, str(target), useCompression=compress)


def write_image(image, path: str | Path, *, compress: bool = True) -> Path:
    """Write an image atomically (NIfTI when the name ends in .nii.gz)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        write_image_to(image, tmp, compress=compress)
    return path


def check_output_not_inside_input(output: Path, inputs: Iterable[Path]) -> None:
    """Refuse an output folder that is an input folder or lies inside one.

    ``<input>/derivatives/...`` is allowed, as BIDS apps allow it.
    """
    from metcli.core.errors import UsageError

    out = Path(output).resolve()
    for item in inputs:
        src = Path(item).resolve()
        if out == src:
            raise UsageError(
                f"the output folder is the input folder {item}",
                fix="choose another output folder, for example "
                f"{Path(item) / 'derivatives' / '<command>'}",
            )
        if src in out.parents and (src / "derivatives") not in (out, *out.parents):
            raise UsageError(
                f"the output folder {output} lies inside the input folder {item}",
                fix=f"write outside it or under {Path(item) / 'derivatives'}",
            )
        if out in src.parents:
            raise UsageError(
                f"the input folder {item} lies inside the output folder {output}",
                fix="choose an output folder outside the inputs",
            )


def ensure_callable(fn: Callable | None) -> Callable:
    return fn if fn is not None else (lambda *a, **k: None)
