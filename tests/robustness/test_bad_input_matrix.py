"""Bad input, command by command (issue 13, item 10): one small valid input set, one fault.

Every case copies a tiny synthetic cohort (``metcli synth --subjects 2``, small size,
built once for this module with its features), puts one fault into the copy and runs
one command. It checks what README.md's "Errors and exit codes" promises:

- the exit code: 1 error, 2 usage error (bad option, unknown participant, output
  inside an input), 3 some participants failed and the others are done;
- the message: for 1 and 2 one ``metcli: error:`` (or click's ``Error:``) line that
  names the offending file and what is wrong; for 3 the file and the message in the
  log line and table, and the summary line naming the participant; never a
  traceback nor an "unexpected" error;
- nothing partial: no temporary file in the output folder, no file of the failed
  participant (for 1 and 2, no output file at all beyond dataset_description.json);
- the inputs unchanged (every file of every input, hashed before and after).

Cases where the documented answer is a success (an empty lesion mask, a one-voxel
lesion, a constant CT) check the documented output instead. Read-only output folders
are skipped as root (root writes into them). Cases that fail today because of a
defect are ``xfail(strict=True)`` with what happens today, so that they fail once
the defect is fixed and the mark can go. segment runs the shipped demo model on one
participant whose CT fails (the model loads, nothing is segmented); train-cnn only
on inputs refused before training.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REPO, invoke

SUB = "sub-001"  # the participant every fault is put into; sub-002 stays valid
CT = f"rawdata/{SUB}/anat/{SUB}_ce-portal_ct.nii.gz"
DSEG = f"derivatives/truth/{SUB}/anat/{SUB}_ce-portal_dseg.nii.gz"
LESIONS = f"derivatives/truth-lesions/{SUB}/anat/{SUB}_ce-portal_desc-lesions_dseg.nii.gz"
LESION_TABLE = LESIONS.replace(".nii.gz", ".tsv")
FEATURES = "derivatives/features"
PARTICIPANTS = "rawdata/participants.tsv"
DEMO_MODEL = REPO / "weights" / "demo" / "metcli-demo-nnunet"
UNKNOWN = ("is not a participant of this dataset", "choose among: 001, 002")
LABELS_3_7 = "3, 7"  # the message names both unexpected labels
ALL = "*"  # Scenario.failed: the whole command failed, no output file may be left


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """2 participants (sub-001 colorectal, sub-002 pancreatic): CTs, DICOM series, true
    dseg, split-lesions' lesion maps and extract's features."""
    root = tmp_path_factory.mktemp("small") / "cohort"
    runner = CliRunner()
    invoke(runner, ["synth", root, "--subjects", 2, "--dicom", "-q"])
    invoke(
        runner,
        ["extract", root / "rawdata", root / "derivatives/truth-lesions", root / FEATURES, "-q"],
    )
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A radiomics model (logistic regression, 3 features and the covariates age and sex)
    trained on 8 synthetic participants, and its predictions on them (for evaluate)."""
    root = tmp_path_factory.mktemp("trained")
    runner = CliRunner()
    cohort = root / "cohort"
    invoke(runner, ["synth", cohort, "--subjects", 8, "-q"])
    invoke(
        runner,
        ["extract", cohort / "rawdata", cohort / "derivatives/truth-lesions", cohort / FEATURES],
    )
    invoke(
        runner,
        [
            "train-radiomics",
            cohort / FEATURES,
            root / "models",
            "--labels",
            cohort / PARTICIPANTS,
            "--classifiers",
            "logistic-regression",
            "--sampler",
            "none",
            "--cv-folds",
            3,
            "--cv-repeats",
            1,
            "--inner-folds",
            2,
            "--importance-trees",
            10,
            "--importance-repeats",
            2,
            "--max-features",
            3,
            "--covariates",
            "age,sex",
            "-q",
        ],
    )
    model = root / "models" / "logistic-regression_none"
    invoke(
        runner,
        [
            "predict",
            model,
            cohort / FEATURES,
            root / "predictions",
            "-q",
            "--participants",
            cohort / PARTICIPANTS,
        ],
    )
    return {
        "model": model,
        "features": cohort / FEATURES,
        "participants": cohort / PARTICIPANTS,
        "predictions": root / "predictions",
    }


class Inputs:
    """What a case builds on: the module's cohorts, built when a case first asks."""

    def __init__(self, request, tmp_path: Path):
        self.request, self.tmp = request, tmp_path

    def small(self) -> Path:
        """A copy of the 2-participant cohort (tmp/c)."""
        work = self.tmp / "c"
        shutil.copytree(self.request.getfixturevalue("small"), work)
        return work

    def trained(self) -> dict[str, Path]:
        """Copies of the model folder, its training features and participants.tsv, and of
        its predictions."""
        source = self.request.getfixturevalue("trained")
        copies = {}
        for key, path in source.items():
            target = self.tmp / key / path.name
            if path.is_dir():
                shutil.copytree(path, target)
            else:
                target.parent.mkdir(parents=True)
                shutil.copy2(path, target)
            copies[key] = target
        return copies


# ----------------------------------------------------------------------------- faults
def _read(path: Path):
    import SimpleITK as sitk

    return sitk.ReadImage(str(path))


def _write(image, path: Path) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(image, str(path), useCompression=True)


def _array(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(_read(path))


def _replace_array(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (z, y, x) on the grid of the image at ``path``."""
    import SimpleITK as sitk

    image = _read(path)
    new = sitk.GetImageFromArray(array)
    new.CopyInformation(image)
    _write(new, path)


def corrupt(path: Path) -> None:
    """Random bytes in place of the file."""
    path.write_bytes(np.random.default_rng(13).bytes(4096))


def truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def as_2d(path: Path) -> None:
    import SimpleITK as sitk

    image = _read(path)
    middle = sitk.GetArrayFromImage(image)[image.GetSize()[2] // 2]
    flat = sitk.GetImageFromArray(middle)
    flat.SetSpacing(image.GetSpacing()[:2])
    flat.SetOrigin(image.GetOrigin()[:2])
    _write(flat, path)


def as_4d(path: Path) -> None:
    """Two volumes (a 4D file of one volume is accepted as 3D)."""
    import SimpleITK as sitk

    image = _read(path)
    _write(sitk.JoinSeries([image, image]), path)


def with_nan(path: Path) -> None:
    array = _array(path).astype(np.float32)
    array[array.shape[0] // 2, 40:44, 40:44] = np.nan
    _replace_array(path, array)


def constant(path: Path, value) -> None:
    array = _array(path)
    _replace_array(path, np.full_like(array, value))


def on_other_grid(path: Path) -> None:
    """The same voxels with another spacing and origin."""
    image = _read(path)
    image.SetSpacing(tuple(s * 1.25 for s in image.GetSpacing()))
    image.SetOrigin(tuple(o + 7.5 for o in image.GetOrigin()))
    _write(image, path)


def with_labels_3_and_7(path: Path) -> None:
    """Voxels labelled 3 in the liver and 7 in the background, beside 0, 1 and 2."""
    array = _array(path)
    liver = np.argwhere(array == 1)[:20]
    array[tuple(liver.T)] = 3
    array[0:2, 0:3, 0:3] = 7
    _replace_array(path, array)


def without_lesions(path: Path) -> None:
    """A dseg whose lesion voxels (2) became liver (1)."""
    array = _array(path)
    array[array == 2] = 1
    _replace_array(path, array)


def one_voxel_lesion(path: Path) -> None:
    """A lesion of one voxel in the liver, as far from the others as can be."""
    array = _array(path)
    lesions = np.argwhere(array >= 2)
    liver = np.argwhere(array == 1)
    distance = np.min(
        np.abs(liver[:, None, :] - lesions[None, ::7, :]).max(axis=2), axis=1
    )  # Chebyshev distance to (a sample of) the lesion voxels
    array[tuple(liver[int(np.argmax(distance))])] = 2
    _replace_array(path, array)


def edit_tsv(path: Path, change: Callable[[list[list[str]]], list[list[str]]]) -> None:
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    path.write_text("\n".join("\t".join(r) for r in change(rows)) + "\n")


def drop_column(path: Path, column: str) -> None:
    def change(rows):
        index = rows[0].index(column)
        return [r[:index] + r[index + 1 :] for r in rows]

    edit_tsv(path, change)


def duplicate_row(path: Path, participant: str = SUB) -> None:
    edit_tsv(path, lambda rows: rows + [next(r for r in rows if r[0] == participant)])


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2) + "\n")


# ----------------------------------------------------------------------------- checks
@dataclass
class Scenario:
    """One run of one command on an input set with one fault."""

    args: list
    code: int
    names: str  # the offending file (its name, or a path), named on stderr
    message: str | tuple[str, ...]  # what is wrong, as stderr words it
    out: Path | None = None  # the output folder
    failed: str | None = None  # the participant that failed, or ALL
    inputs: list[Path] = field(default_factory=list)  # hashed before and after
    then: Callable[[Path], None] | None = None  # checks of a documented success
    read_only: bool = False  # the output folder exists and may not be written to
    done: str | None = None  # for exit 3: the participant whose outputs were written
    batch: bool = False  # every participant failed (exit 1): the batch's summary and table

    def __post_init__(self):
        if isinstance(self.message, str):
            self.message = (self.message,)


def tree_hash(path: Path) -> dict[str, str]:
    path = Path(path)
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "folder"
        for p in sorted(path.rglob("*"))
    }


def _squash(text: str) -> str:
    """Without any whitespace: rich wraps long lines, in table cells even inside a path."""
    return "".join(str(text).split()).lower()


def leftovers(out: Path, failed: str | None) -> list[str]:
    """Temporary files (metcli's are hidden, .NAME.XXXX.part.EXT), and output files of
    the failed participant (of anyone's for ALL)."""
    if out is None or not out.is_dir():
        return []
    found = []
    for path in out.rglob("*"):
        if not path.is_file():
            continue
        relative = str(path.relative_to(out))
        if path.name == ".bidsignore":  # a raw dataset's own file (docs/bids.md)
            continue
        if path.name.startswith(".") or ".tmp" in path.name or ".part" in path.name:
            found.append(relative)
        elif failed == ALL and path.name != "dataset_description.json":
            found.append(relative)
        elif failed not in (None, ALL) and failed in relative:
            found.append(relative)
    return found


def check(scenario: Scenario, result) -> None:
    stderr = result.stderr
    assert result.exit_code == scenario.code, (
        f"exit {result.exit_code} != {scenario.code}\nstdout:\n{result.stdout}\nstderr:\n{stderr}"
    )
    assert "Traceback" not in stderr and "unexpected" not in stderr, stderr
    if scenario.code != 0:
        errors = [
            line for line in stderr.splitlines() if line.startswith(("metcli: error:", "Error:"))
        ]
        assert len(errors) == 1, stderr
        batch = scenario.code == 3 or scenario.batch
        if not batch and errors[0].startswith("metcli:"):  # click adds its usage
            assert stderr.strip() == errors[0], f"more than the error line:\n{stderr}"
        # exit 1 and 2: the error line names the file; a batch with failed participants
        # (exit 3, or exit 1 when all failed): the log line and the table do, and the
        # error line names the participant
        where = _squash(stderr if batch else errors[0])
        for needle in (scenario.names, *scenario.message):
            assert _squash(needle) in where, f"{needle!r} not in:\n{stderr}"
        if batch:
            assert scenario.failed in errors[0], stderr
            assert "failed" in stderr.splitlines()[-2], stderr  # the summary line
            assert ("all " in errors[0]) == (scenario.code == 1), errors[0]
            if scenario.done:
                written = [str(p.relative_to(scenario.out)) for p in scenario.out.rglob("*")]
                assert any(scenario.done in p for p in written), written
    failed = scenario.failed if scenario.code else None  # a success leaves its outputs
    assert not leftovers(scenario.out, failed), leftovers(scenario.out, failed)


# ----------------------------------------------------------------------------- the matrix
CASES: list = []


def case(command: str, fault: str, *marks):
    def register(build):
        CASES.append(pytest.param(build, id=f"{command}:{fault}", marks=marks))
        return build

    return register


def defect(what_happens_today: str):
    return pytest.mark.xfail(
        strict=True, raises=AssertionError, reason=f"defect: {what_happens_today}"
    )


AS_ROOT = pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="runs as root, which ignores permissions: a read-only folder is written to",
)


def read_only(scenario: Scenario) -> Scenario:
    """The case's output folder, made and then made read-only by the test."""
    scenario.read_only = True
    scenario.code, scenario.failed, scenario.message = 1, ALL, ("permission",)
    scenario.batch = False
    scenario.names = scenario.out.name
    return scenario


def test_the_matrix_is_large_enough():
    assert len(CASES) >= 60


@pytest.mark.parametrize("build", CASES)
def test_bad_input(build, request, tmp_path, runner):
    scenario = build(Inputs(request, tmp_path))
    before = {str(p): tree_hash(p) for p in scenario.inputs}
    if scenario.read_only:
        scenario.out.mkdir(parents=True)
        scenario.out.chmod(0o555)
    try:
        result = invoke(runner, [*scenario.args, "--no-progress"], expect=None)
    finally:
        if scenario.read_only:
            scenario.out.chmod(0o755)
    check(scenario, result)
    after = {str(p): tree_hash(p) for p in scenario.inputs}
    assert after == before, "an input changed"
    if scenario.then is not None:
        scenario.then(scenario.out)


# ----------------------------------------------------------------------------- split-lesions
def _split(inputs: Inputs, fault=None, *, code=3, message="", out=None, extra=(), **kw):
    work = inputs.small()
    seg = work / "derivatives/truth"
    if fault is not None:
        fault(work / DSEG)
    out = out(work) if callable(out) else (work / "out")
    return Scenario(
        ["split-lesions", seg, out, *extra],
        code,
        kw.pop("names", Path(DSEG).name),
        message,
        out=out,
        failed=kw.pop("failed", SUB),
        done="sub-002" if code == 3 else None,
        inputs=[seg, *kw.pop("also", [])],
        **kw,
    )


@case("split-lesions", "corrupt dseg")
def _(i):
    return _split(i, corrupt, message="cannot read the")


@case("split-lesions", "truncated dseg")
def _(i):
    return _split(i, truncate, message="the file is truncated")


@case("split-lesions", "2D dseg")
def _(i):
    return _split(i, as_2d, message="is 2D")


@case("split-lesions", "4D dseg")
def _(i):
    return _split(i, as_4d, message="is 4D")


@case("split-lesions", "NaN voxels in the dseg")
def _(i):
    return _split(i, with_nan, message="NaN or infinite")


@case("split-lesions", "labels 3 and 7 in the dseg")
def _(i):
    return _split(i, with_labels_3_and_7, message=LABELS_3_7)


def _no_lesion_rows(out: Path) -> None:
    table = out / LESION_TABLE.split("truth-lesions/")[1]
    assert table.read_text().splitlines()[1:] == []
    assert (out / "lesions.tsv").is_file()


@case("split-lesions", "empty lesion mask")
def _(i):
    return _split(i, without_lesions, code=0, then=_no_lesion_rows)


def _one_voxel_row(out: Path) -> None:
    rows = (out / LESION_TABLE.split("truth-lesions/")[1]).read_text().splitlines()
    header = rows[0].split("\t")
    small = [dict(zip(header, r.split("\t"))) for r in rows[1:]]
    small = [r for r in small if r["voxels"] == "1"]
    assert len(small) == 1 and small[0]["kept"] == "false" and small[0]["reason"] != "n/a"


@case("split-lesions", "one-voxel lesion")
def _(i):
    return _split(i, one_voxel_lesion, code=0, then=_one_voxel_row)


@case("split-lesions", "--config file of invalid YAML")
def _(i):
    config = i.tmp / "config.yaml"
    config.write_text("min-diameter-mm: [\n")
    return _split(
        i,
        code=2,
        extra=["--config", config],
        names="config.yaml",
        message="cannot read it as YAML",
        failed=ALL,
        also=[config],
    )


@case("split-lesions", "output inside input")
def _(i):
    return _split(
        i,
        code=2,
        out=lambda w: w / "derivatives/truth/out",
        names="truth",
        message="inside",
        failed=ALL,
    )


@case("split-lesions", "output equal to input")
def _(i):
    return _split(
        i,
        code=2,
        out=lambda w: w / "derivatives/truth",
        names="truth",
        message="input",
        failed=None,
    )


@case("split-lesions", "non-existent input")
def _(i):
    work = i.small()
    return Scenario(
        ["split-lesions", work / "derivatives/nothing", work / "out"],
        2,
        "nothing",
        "does not exist",
        out=work / "out",
        failed=ALL,
        inputs=[work],
    )


@case("split-lesions", "input is a file")
def _(i):
    work = i.small()
    return Scenario(
        ["split-lesions", work / DSEG, work / "out"],
        2,
        Path(DSEG).name,
        "is a file",
        out=work / "out",
        failed=ALL,
        inputs=[work / "derivatives/truth"],
    )


@case("split-lesions", "unknown participant label")
def _(i):
    return _split(
        i,
        code=2,
        extra=["--participant-label", "999"],
        names="'999'",
        message=UNKNOWN,
        failed=ALL,
    )


@case("split-lesions", "read-only output folder", AS_ROOT)
def _(i):
    return read_only(_split(i))


# ----------------------------------------------------------------------------- extract
def _extract(inputs: Inputs, fault=None, target=CT, *, code=3, message="", out=None, **kw):
    work = inputs.small()
    raw, lesions = work / "rawdata", work / "derivatives/truth-lesions"
    if fault is not None:
        fault(work / target)
    out = out(work) if callable(out) else (work / "out")
    return Scenario(
        ["extract", raw, lesions, out, *kw.pop("extra", ())],
        code,
        kw.pop("names", Path(target).name),
        message,
        out=out,
        failed=kw.pop("failed", SUB),
        done="sub-002" if code == 3 else None,
        inputs=[raw, lesions, *kw.pop("also", [])],
        **kw,
    )


@case("extract", "corrupt CT")
def _(i):
    return _extract(i, corrupt, message="cannot read the CT")


@case("extract", "truncated CT")
def _(i):
    return _extract(i, truncate, message="the file is truncated")


@case("extract", "2D CT")
def _(i):
    return _extract(i, as_2d, message="is 2D")


@case("extract", "4D CT")
def _(i):
    return _extract(i, as_4d, message="is 4D")


@case("extract", "NaN voxels in the CT")
def _(i):
    return _extract(i, with_nan, message="NaN or infinite")


def _features_rows(out: Path) -> list[dict[str, str]]:
    rows = (out / SUB / "anat" / f"{SUB}_ce-portal_desc-radiomics_features.tsv").read_text()
    lines = rows.splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def _constant_ct_features(out: Path) -> None:
    """A constant CT has no texture: its lesion's features are those of a flat region, or
    it fails explicitly with n/a values; never NaN (docs/extract.md: written n/a)."""
    (row,) = _features_rows(out)
    if row["status"] == "ok":
        assert float(row["original_firstorder_Mean"]) == 40
        assert float(row["original_firstorder_Variance"]) == 0
    else:
        assert row["status"].startswith("failed:") and row["original_firstorder_Mean"] == "n/a"
    assert not [k for k, v in row.items() if v.lower() in ("nan", "inf", "-inf")], row


@case("extract", "constant CT")
def _(i):
    return _extract(i, lambda p: constant(p, 40), code=0, then=_constant_ct_features)


@case("extract", "lesion map on another grid")
def _(i):
    return _extract(i, on_other_grid, LESIONS, message="grid")


@case("extract", "truncated lesion map")
def _(i):
    return _extract(i, truncate, LESIONS, message="the file is truncated")


@case("extract", "lesion ids 3 and 7 not in the lesion table")
def _(i):
    return _extract(i, with_labels_3_and_7, LESIONS, message=(Path(LESION_TABLE).name, "3, 7"))


def _empty_lesion_map(path: Path) -> None:
    constant(path, 0)
    edit_tsv(path.with_name(path.name.replace(".nii.gz", ".tsv")), lambda rows: rows[:1])


def _header_only(out: Path) -> None:
    assert _features_rows(out) == []
    assert (out / "features.tsv").is_file()


@case("extract", "empty lesion map")
def _(i):
    return _extract(i, _empty_lesion_map, LESIONS, code=0, then=_header_only)


def _single_voxel_map(path: Path) -> None:
    """Lesion 1 (sub-001's only lesion) shrunk to one voxel."""
    array = _array(path)
    where = tuple(np.argwhere(array == 1)[0])
    array[:] = 0
    array[where] = 1
    _replace_array(path, array)


def _single_voxel_failed(out: Path) -> None:
    (row,) = _features_rows(out)
    assert row["status"] == "failed:single_voxel" and row["message"] != "n/a"
    assert row["original_firstorder_Mean"] == "n/a"


@case("extract", "one-voxel lesion")
def _(i):
    return _extract(i, _single_voxel_map, LESIONS, code=0, then=_single_voxel_failed)


@case("extract", "lesion table missing a column")
def _(i):
    return _extract(i, lambda p: drop_column(p, "kept"), LESION_TABLE, message="kept")


@case("extract", "parameter file of invalid YAML")
def _(i):
    params = i.tmp / "params.yaml"
    params.write_text("setting: [unclosed\n")
    return _extract(
        i,
        code=2,
        extra=["--params", params],
        names="params.yaml",
        message="not valid YAML",
        failed=ALL,
        also=[params],
    )


@case("extract", "output inside input")
def _(i):
    return _extract(
        i,
        code=2,
        out=lambda w: w / "rawdata/features",
        names="rawdata",
        message="inside",
        failed=ALL,
    )


@case("extract", "output equal to input")
def _(i):
    return _extract(
        i,
        code=2,
        out=lambda w: w / "derivatives/truth-lesions",
        names="truth-lesions",
        message="input",
        failed=None,
    )


@case("extract", "non-existent input")
def _(i):
    work = i.small()
    return Scenario(
        ["extract", work / "nothing", work / "derivatives/truth-lesions", work / "out"],
        2,
        "nothing",
        "does not exist",
        out=work / "out",
        failed=ALL,
        inputs=[work],
    )


@case("extract", "input is a file")
def _(i):
    work = i.small()
    return Scenario(
        ["extract", work / CT, work / "derivatives/truth-lesions", work / "out"],
        2,
        Path(CT).name,
        "is a file",
        out=work / "out",
        failed=ALL,
        inputs=[work],
    )


@case("extract", "unknown participant label")
def _(i):
    return _extract(
        i,
        code=2,
        extra=["--participant-label", "sub-999"],
        names="'sub-999'",
        message=UNKNOWN,
        failed=ALL,
    )


@case("extract", "read-only output folder", AS_ROOT)
def _(i):
    return read_only(_extract(i))


# ----------------------------------------------------------------------------- evaluate-seg
def _evaluate_seg(inputs: Inputs, fault=None, target="auto", *, code=3, message="", **kw):
    """SEG_DIR: a copy of the true dseg ("auto"); REFERENCE_DIR: the true dseg."""
    work = inputs.small()
    reference = work / "derivatives/truth"
    seg = work / "derivatives/auto"
    shutil.copytree(reference, seg)
    file = (seg if target == "auto" else reference) / DSEG.split("truth/")[1]
    if fault is not None:
        fault(file)
    out = kw.pop("out", None)
    out = out(work) if callable(out) else (work / "out")
    return Scenario(
        ["evaluate-seg", seg, reference, out, "--bootstrap", 100, *kw.pop("extra", ())],
        code,
        kw.pop("names", file.name),
        message,
        out=out,
        failed=kw.pop("failed", SUB),
        done="sub-002" if code == 3 else None,
        inputs=[seg, reference],
        **kw,
    )


@case("evaluate-seg", "corrupt segmentation")
def _(i):
    return _evaluate_seg(i, corrupt, message="cannot read the")


@case("evaluate-seg", "truncated reference")
def _(i):
    return _evaluate_seg(i, truncate, "reference", message="the file is truncated")


@case("evaluate-seg", "segmentation on another grid")
def _(i):
    return _evaluate_seg(i, on_other_grid, message="grid")


@case("evaluate-seg", "labels 3 and 7 in the segmentation")
def _(i):
    return _evaluate_seg(i, with_labels_3_and_7, message=LABELS_3_7)


def _lesion_dice_na(out: Path) -> None:
    table = out / SUB / "anat" / f"{SUB}_ce-portal_desc-overlap_metrics.tsv"
    lines = table.read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    lesion = [r for r in rows if r.get("label", r.get("region")) == "lesion"]
    assert lesion and lesion[0]["dice"] == "n/a", rows


def _both_without_lesions(path: Path) -> None:
    without_lesions(path)
    reference = Path(str(path).replace("derivatives/auto", "derivatives/truth"))
    without_lesions(reference)


@case("evaluate-seg", "empty lesion mask in both")
def _(i):
    return _evaluate_seg(i, _both_without_lesions, code=0, then=_lesion_dice_na)


@case("evaluate-seg", "unknown participant label")
def _(i):
    return _evaluate_seg(
        i,
        code=2,
        extra=["--participant-label", "999"],
        names="'999'",
        message=UNKNOWN,
        failed=ALL,
    )


@case("evaluate-seg", "output inside input")
def _(i):
    return _evaluate_seg(
        i,
        code=2,
        out=lambda w: w / "derivatives/auto/metrics",
        names="auto",
        message="inside",
        failed=ALL,
    )


@case("evaluate-seg", "output equal to input")
def _(i):
    return _evaluate_seg(
        i,
        code=2,
        out=lambda w: w / "derivatives/truth",
        names="truth",
        message="input",
        failed=None,
    )


@case("evaluate-seg", "read-only output folder", AS_ROOT)
def _(i):
    return read_only(_evaluate_seg(i))


# ----------------------------------------------------------------------------- import-mask
def _import_mask(inputs: Inputs, fault=None, *, code=1, message="", **kw):
    """MASK: sub-001's true dseg copied beside the cohort; RAW_DIR: rawdata."""
    work = inputs.small()
    mask = work / "manual" / "mask.nii.gz"
    mask.parent.mkdir()
    shutil.copy2(work / DSEG, mask)
    if fault is not None:
        fault(mask)
    out = kw.pop("out", None)
    out = out(work) if callable(out) else (work / "seg")
    return Scenario(
        [
            "import-mask",
            kw.pop("mask", mask),
            work / "rawdata",
            out,
            "--participant-label",
            kw.pop("label", "001"),
        ],
        code,
        kw.pop("names", mask.name),
        message,
        out=out,
        failed=kw.pop("failed", ALL),
        inputs=[mask.parent, work / "rawdata"],
        **kw,
    )


@case("import-mask", "corrupt mask")
def _(i):
    return _import_mask(i, corrupt, message="cannot read the")


@case("import-mask", "truncated mask")
def _(i):
    return _import_mask(i, truncate, message="the file is truncated")


@case("import-mask", "2D mask")
def _(i):
    return _import_mask(i, as_2d, message="is 2D")


@case("import-mask", "4D mask")
def _(i):
    return _import_mask(i, as_4d, message="is 4D")


@case("import-mask", "NaN voxels in the mask")
def _(i):
    return _import_mask(i, with_nan, message="NaN or infinite")


@case("import-mask", "mask on another grid")
def _(i):
    return _import_mask(i, on_other_grid, message="grid")


@case("import-mask", "labels 3 and 7 in the mask")
def _(i):
    return _import_mask(i, with_labels_3_and_7, message=LABELS_3_7)


def _imported_without_lesions(out: Path) -> None:
    (dseg,) = out.rglob("*_dseg.nii.gz")
    assert set(np.unique(_array(dseg)).tolist()) == {0, 1}


@case("import-mask", "empty lesion mask")
def _(i):
    return _import_mask(i, without_lesions, code=0, failed=None, then=_imported_without_lesions)


@case("import-mask", "unknown participant label")
def _(i):
    return _import_mask(i, code=2, label="999", names="participants.tsv", message=UNKNOWN)


@case("import-mask", "output inside input")
def _(i):
    return _import_mask(
        i, code=2, out=lambda w: w / "rawdata/seg", names="rawdata", message="inside"
    )


@case("import-mask", "non-existent mask")
def _(i):
    return _import_mask(
        i, code=2, mask=i.tmp / "nothing.nii.gz", names="nothing.nii.gz", message="does not exist"
    )


@case("import-mask", "read-only output folder", AS_ROOT)
def _(i):
    return read_only(_import_mask(i))


# ----------------------------------------------------------------------------- import-dicom
def _import_dicom(inputs: Inputs, fault=None, *, code=1, message="", **kw):
    """DICOM_DIR: sub-001's series as synth --dicom wrote it; RAW_DIR: a new folder."""
    work = inputs.small()
    dicom = work / "sourcedata/dicom" / SUB
    slice_ = sorted(dicom.glob("*.dcm"))[20]
    if fault is not None:
        fault(slice_)
    out = kw.pop("out", None)
    out = out(work) if callable(out) else (work / "raw2")
    return Scenario(
        [
            "import-dicom",
            kw.pop("dicom", dicom),
            out,
            "--participant-label",
            kw.pop("label", "001"),
        ],
        code,
        kw.pop("names", slice_.name),
        message,
        out=out,
        failed=kw.pop("failed", ALL),
        inputs=[dicom, *kw.pop("also", [])],
        **kw,
    )


@case("import-dicom", "corrupt slice")
def _(i):
    # not DICOM, so skipped (import-dicom's rule): the series has a gap where it was,
    # named by the folder and the slices on either side
    return _import_dicom(i, corrupt, names=SUB, message=("CT0020.dcm", "1 slice missing"))


@case("import-dicom", "truncated slice")
def _(i):
    return _import_dicom(i, lambda p: truncate(p, 0.6), message="cannot decode the pixel data")


def _into_rawdata(inputs: Inputs, change: Callable[[Path], None], message: str) -> Scenario:
    """sub-001's series imported as a new participant 003 into rawdata, whose
    participants.tsv ``change`` spoils: rawdata must stay as it was (no sub-003)."""

    def fault(slice_):
        change(slice_.parents[3] / PARTICIPANTS)  # work/sourcedata/dicom/sub-001/CT*.dcm

    scenario = _import_dicom(
        inputs,
        fault,
        out=lambda w: w / "rawdata",
        label="003",
        names="participants.tsv",
        message=message,
        failed=None,
    )
    scenario.inputs.append(scenario.out)
    return scenario


@case("import-dicom", "participants.tsv without participant_id")
def _(i):
    return _into_rawdata(i, lambda p: drop_column(p, "participant_id"), "participant_id")


@case("import-dicom", "duplicate participant in participants.tsv")
def _(i):
    return _into_rawdata(i, lambda p: duplicate_row(p, "sub-002"), "sub-002 is listed twice")


@case("import-dicom", "folder without DICOM files")
def _(i):
    def fault(slice_):
        for path in slice_.parent.glob("*.dcm"):
            corrupt(path)

    return _import_dicom(i, fault, names=SUB, message="no DICOM image files")


@case("import-dicom", "output inside input")
def _(i):
    return _import_dicom(
        i, code=2, out=lambda w: w / "sourcedata/dicom" / SUB / "raw", names=SUB, message="inside"
    )


@case("import-dicom", "input is a file")
def _(i):
    scenario = _import_dicom(i, code=2, names="CT0001.dcm", message="is a file")
    scenario.args[1] = scenario.args[1] / "CT0001.dcm"
    return scenario


@case("import-dicom", "read-only output folder", AS_ROOT)
def _(i):
    return read_only(_import_dicom(i))


# ----------------------------------------------------------------------------- segment
def _segment(inputs: Inputs, fault=None, *, code=1, message="", **kw):
    """The shipped demo model on sub-001 only (--participant-label 001): the model
    loads, the CT fails, nothing is segmented (exit 1: every participant failed)."""
    work = inputs.small()
    raw = work / "rawdata"
    if fault is not None:
        fault(work / CT)
    out = kw.pop("out", None)
    out = out(work) if callable(out) else (work / "seg")
    extra = kw.pop("extra", ["--participant-label", "001"])
    return Scenario(
        ["segment", raw, out, "--threads", 1, "--no-tta", *extra],
        code,
        kw.pop("names", Path(CT).name),
        message,
        out=out,
        failed=kw.pop("failed", SUB),
        inputs=[raw, *kw.pop("also", [])],
        batch=kw.pop("batch", code == 1),
        **kw,
    )


@case("segment", "corrupt CT")
def _(i):
    return _segment(i, corrupt, message="cannot read the CT")


@case("segment", "truncated CT")
def _(i):
    return _segment(i, truncate, message="the file is truncated")


@case("segment", "2D CT")
def _(i):
    return _segment(i, as_2d, message="is 2D")


@case("segment", "NaN voxels in the CT")
def _(i):
    return _segment(i, with_nan, message="NaN or infinite")


@case("segment", "4D CT")
def _(i):
    return _segment(i, as_4d, message="is 4D")


@case("segment", "unknown participant label")
def _(i):
    return _segment(
        i, code=2, extra=["--participant-label", "999"], names="'999'", message=UNKNOWN, failed=ALL
    )


@case("segment", "output inside input")
def _(i):
    return _segment(
        i, code=2, out=lambda w: w / "rawdata/seg", names="rawdata", message="inside", failed=ALL
    )


@case("segment", "model folder with invalid plans.json")
def _(i):
    model = i.tmp / "model"
    shutil.copytree(DEMO_MODEL, model)
    (model / "plans.json").write_text('{"plans_name": ')
    return _segment(
        i,
        code=1,
        extra=["--model", model],
        names="plans.json",
        message="not valid JSON",
        failed=ALL,
        also=[model],
        batch=False,
    )


@case("segment", "read-only output folder", AS_ROOT)
def _(i):
    return read_only(_segment(i))


# ----------------------------------------------------------------------------- export-onnx
def _export(inputs: Inputs, fault=None, *, code=1, message="", names="", **kw):
    model = inputs.tmp / "model"
    shutil.copytree(DEMO_MODEL, model)
    if fault is not None:
        fault(model)
    out = kw.pop("out", None)
    out = out(model) if callable(out) else (inputs.tmp / "onnx")
    return Scenario(
        ["export-onnx", kw.pop("model", model), out],
        code,
        names,
        message,
        out=out,
        failed=ALL,
        inputs=[model],
        **kw,
    )


@case("export-onnx", "invalid dataset.json")
def _(i):
    return _export(
        i,
        lambda m: (m / "dataset.json").write_text("{labels: "),
        names="dataset.json",
        message="not valid JSON",
    )


@case("export-onnx", "checkpoint replaced by garbage")
def _(i):
    return _export(
        i,
        lambda m: corrupt(m / "fold_0/checkpoint_final.pth"),
        names="checkpoint_final.pth",
        message="not a PyTorch checkpoint",
    )


@case("export-onnx", "truncated checkpoint")
def _(i):
    return _export(
        i,
        lambda m: truncate(m / "fold_0/checkpoint_final.pth"),
        names="checkpoint_final.pth",
        message="not a PyTorch checkpoint",
    )


@case("export-onnx", "output inside input")
def _(i):
    return _export(i, code=2, out=lambda m: m / "onnx", names="model", message="inside")


@case("export-onnx", "non-existent input")
def _(i):
    return _export(i, code=2, model=i.tmp / "nothing", names="nothing", message="does not exist")


# ----------------------------------------------------------------------------- train-radiomics
FAST = [
    "--classifiers",
    "logistic-regression",
    "--sampler",
    "none",
    "--cv-folds",
    3,
    "--cv-repeats",
    1,
    "--inner-folds",
    2,
    "--importance-trees",
    10,
    "--importance-repeats",
    2,
    "--max-features",
    3,
]


def _train(inputs: Inputs, fault=None, target="participants", *, code=1, message="", **kw):
    data = inputs.trained()
    files = {
        "participants": data["participants"],
        "features": data["features"] / "features.tsv",
        "split": inputs.tmp / "split.tsv",
    }
    if fault is not None:
        fault(files[target])
    out = kw.pop("out", None)
    out = out(data) if callable(out) else (inputs.tmp / "out")
    extra = kw.pop("extra", [])
    if target == "split":
        extra = ["--split", files["split"], "--protocol", "holdout"]
    return Scenario(
        ["train-radiomics", data["features"], out, "--labels", data["participants"], *FAST, *extra],
        code,
        kw.pop("names", files[target].name),
        message,
        out=out,
        failed=kw.pop("failed", ALL),
        inputs=[data["features"], data["participants"], *kw.pop("also", [])],
        **kw,
    )


@case("train-radiomics", "participants.tsv missing the label column")
def _(i):
    return _train(i, lambda p: drop_column(p, "primary"), message="primary")


@case("train-radiomics", "duplicate participant in participants.tsv")
def _(i):
    return _train(i, duplicate_row, message=f"{SUB} is listed twice")


@case("train-radiomics", "features table missing a column")
def _(i):
    return _train(i, lambda p: drop_column(p, "lesion_id"), "features", message="lesion_id")


@case("train-radiomics", "corrupt features table")
def _(i):
    return _train(i, corrupt, "features", message="not a UTF-8 text table")


def _split_in_two_sets(path: Path) -> None:
    rows = ["participant_id\tset"] + [
        f"sub-00{n}\t{'test' if n > 6 else 'train'}" for n in range(1, 9)
    ]
    path.write_text("\n".join(rows + [f"{SUB}\ttest"]) + "\n")


@case("train-radiomics", "split.tsv with a patient in two sets")
def _(i):
    return _train(i, _split_in_two_sets, "split", message="in two sets", also=[i.tmp / "split.tsv"])


@case("train-radiomics", "output equal to input")
def _(i):
    return _train(
        i, code=2, out=lambda d: d["features"], names="features", message="input", failed=None
    )


@case("train-radiomics", "output inside input")
def _(i):
    return _train(
        i, code=2, out=lambda d: d["features"] / "models", names="features", message="inside"
    )


@case("train-radiomics", "non-existent input")
def _(i):
    scenario = _train(i, code=2, names="nothing", message="does not exist")
    scenario.args[1] = i.tmp / "nothing"
    return scenario


@case("train-radiomics", "read-only output folder", AS_ROOT)
def _(i):
    return read_only(_train(i))


# ----------------------------------------------------------------------------- train-cnn
def _train_cnn(inputs: Inputs, fault=None, *, code=1, message="", **kw):
    work = inputs.small()
    raw, lesions = work / "rawdata", work / "derivatives/truth-lesions"
    split = inputs.tmp / "split.tsv"
    split.write_text("participant_id\tset\nsub-001\ttrain\nsub-002\ttest\n")
    if fault is not None:
        fault(work, split)
    out = kw.pop("out", None)
    out = out(work) if callable(out) else (inputs.tmp / "cnn")
    return Scenario(
        [
            "train-cnn",
            raw,
            lesions,
            out,
            "--labels",
            raw / "participants.tsv",
            "--split",
            split,
            "--epochs",
            1,
            "--size",
            32,
            "--arch",
            "densenet121",
            "--threads",
            1,
        ],
        code,
        kw.pop("names", split.name),
        message,
        out=out,
        failed=ALL,
        inputs=[raw, lesions, split],
        **kw,
    )


@case("train-cnn", "split.tsv with a patient in two sets")
def _(i):
    def fault(_work, split):
        split.write_text(split.read_text() + "sub-001\tval\n")

    return _train_cnn(i, fault, message="in two sets")


@case("train-cnn", "participants.tsv missing the label column")
def _(i):
    return _train_cnn(
        i,
        lambda w, s: drop_column(w / PARTICIPANTS, "primary"),
        names="participants.tsv",
        message="primary",
    )


@case("train-cnn", "output inside input")
def _(i):
    return _train_cnn(i, code=2, out=lambda w: w / "rawdata/cnn", names="rawdata", message="inside")


# ----------------------------------------------------------------------------- predict
def _predict(inputs: Inputs, fault=None, target="model.json", *, code=1, message="", **kw):
    """The trained model on the 2-participant cohort's features and participants.tsv."""
    data = inputs.trained()
    work = inputs.small()
    model, features, participants = data["model"], work / FEATURES, work / PARTICIPANTS
    file = {"features.tsv": features / "features.tsv", "participants.tsv": participants}.get(
        target, model / target
    )
    if fault is not None:
        fault(file)
    out = kw.pop("out", None)
    out = out(model, features) if callable(out) else (inputs.tmp / "pred")
    return Scenario(
        [
            "predict",
            kw.pop("model", model),
            features,
            out,
            "--participants",
            participants,
            *kw.pop("extra", []),
        ],
        code,
        kw.pop("names", file.name),
        message,
        out=out,
        failed=kw.pop("failed", ALL),
        inputs=[model, features, participants],
        **kw,
    )


def _swap_classes(card: dict) -> None:
    card["classes"] = card["classes"][::-1]


def _rename_input_column(card: dict) -> None:
    card["inputs"][0]["column"] = "original_firstorder_Median"
    card["inputs"][0]["name"] = "original_firstorder_Median"


@case("predict", "model card with the classes swapped")
def _(i):
    return _predict(i, lambda p: edit_json(p, _swap_classes), message="classes")


@case("predict", "model card with an input column renamed")
def _(i):
    return _predict(i, lambda p: edit_json(p, _rename_input_column), message="input 1")


@case("predict", "model card of invalid JSON")
def _(i):
    return _predict(i, lambda p: p.write_text(p.read_text()[:200]), message="not valid JSON")


@case("predict", "model.onnx replaced by garbage")
def _(i):
    return _predict(i, corrupt, "model.onnx", message="does not match the sha256 in its card")


@case("predict", "features table missing a model input")
def _(i):
    def fault(path):
        card = json.loads((i.tmp / "model/logistic-regression_none/model.json").read_text())
        drop_column(path, card["inputs"][0]["column"])

    return _predict(i, fault, "features.tsv", message="the features lack original_")


@case("predict", "corrupt features table")
def _(i):
    return _predict(i, corrupt, "features.tsv", message="not a UTF-8 text table")


@case("predict", "duplicate participant in participants.tsv")
def _(i):
    return _predict(i, duplicate_row, "participants.tsv", message=f"{SUB} is listed twice")


@case("predict", "participants.tsv missing a covariate column")
def _(i):
    return _predict(i, lambda p: drop_column(p, "age"), "participants.tsv", message="age")


@case("predict", "model folder without model.json")
def _(i):
    return _predict(i, lambda p: p.unlink(), message="model.json is missing")


@case("predict", "unknown participant label")
def _(i):
    return _predict(i, code=2, extra=["--participant-label", "999"], names="'999'", message=UNKNOWN)


@case("predict", "output inside input")
def _(i):
    return _predict(
        i, code=2, out=lambda m, f: m / "pred", names="logistic-regression_none", message="inside"
    )


@case("predict", "output equal to input")
def _(i):
    return _predict(i, code=2, out=lambda m, f: f, names="features", message="input", failed=None)


@case("predict", "model folder is a file")
def _(i):
    scenario = _predict(i, code=2, names="model.json", message="is a file")
    scenario.args[1] = scenario.args[1] / "model.json"
    return scenario


@case("predict", "read-only output folder", AS_ROOT)
def _(i):
    return read_only(_predict(i))


# ----------------------------------------------------------------------------- evaluate
def _evaluate(inputs: Inputs, fault=None, target="participants", *, code=1, message="", **kw):
    data = inputs.trained()
    files = {
        "participants": data["participants"],
        "predictions": data["predictions"] / "predictions.tsv",
    }
    if fault is not None:
        fault(files[target])
    out = kw.pop("out", None)
    out = out(data) if callable(out) else (inputs.tmp / "eval")
    return Scenario(
        [
            "evaluate",
            data["predictions"] / "predictions.tsv",
            out,
            "--labels",
            data["participants"],
            "--bootstrap",
            100,
            "--no-plots",
        ],
        code,
        kw.pop("names", files[target].name),
        message,
        out=out,
        failed=kw.pop("failed", ALL),
        inputs=[data["predictions"], data["participants"]],
        **kw,
    )


@case("evaluate", "participants.tsv missing the label column")
def _(i):
    return _evaluate(i, lambda p: drop_column(p, "primary"), message="primary")


@case("evaluate", "duplicate participant in participants.tsv")
def _(i):
    return _evaluate(i, duplicate_row, message=f"{SUB} is listed twice")


@case("evaluate", "predictions table missing a column")
def _(i):
    return _evaluate(
        i, lambda p: drop_column(p, "prob_pancreatic"), "predictions", message="prob_<class> column"
    )


@case("evaluate", "duplicate participant in the predictions")
def _(i):
    def fault(path):
        edit_tsv(path, lambda rows: rows + [rows[1]])

    return _evaluate(i, fault, "predictions", message="two lesion rows")


@case("evaluate", "corrupt predictions table")
def _(i):
    return _evaluate(i, corrupt, "predictions", message="not a UTF-8 text table")


@case("evaluate", "participant without a label")
def _(i):
    def fault(path):
        edit_tsv(path, lambda rows: [r for r in rows if r[0] != SUB])

    return _evaluate(
        i,
        fault,
        names="predictions.tsv",
        message=("unknown participant(s) sub-001", "participants.tsv"),
    )


@case("evaluate", "output equal to input")
def _(i):
    scenario = _evaluate(
        i, code=2, out=lambda d: d["predictions"], names="predictions", message="input", failed=None
    )
    scenario.args[1] = scenario.out  # the folder holding predictions.tsv, as its input
    return scenario


@case("evaluate", "non-existent input")
def _(i):
    scenario = _evaluate(i, code=2, names="nothing.tsv", message="does not exist")
    scenario.args[1] = i.tmp / "nothing.tsv"
    return scenario


@case("evaluate", "read-only output folder", AS_ROOT)
def _(i):
    return read_only(_evaluate(i))


# ----------------------------------------------------------------------------- synth, weights
@case("synth", "output is a file")
def _(i):
    target = i.tmp / "cohort"
    target.write_text("not a folder\n")
    return Scenario(["synth", target, "--subjects", 2], 2, "cohort", "is a file", inputs=[target])


@case("synth", "output holds a raw dataset synth did not write")
def _(i):
    work = i.small()
    for sidecar in (work / "rawdata").rglob("*.json"):  # what tells synth's own apart
        sidecar.unlink()
    return Scenario(
        ["synth", work, "--subjects", 2],
        1,
        "rawdata",
        "metcli synth did not write",
        inputs=[work / "rawdata"],
    )


@case("synth", "read-only output folder", AS_ROOT)
def _(i):
    out = i.tmp / "cohort"
    return read_only(Scenario(["synth", out, "--subjects", 2], 1, "", "", out=out))


@case("weights", "verify an unknown model name")
def _(i):
    # exit 1, as tests/test_weights.py asks of an unknown name
    return Scenario(["weights", "verify", "no-such-model"], 1, "'no-such-model'", "known:")


@case("weights", "fetch an unknown model name")
def _(i):
    return Scenario(["weights", "fetch", "no-such-model"], 1, "'no-such-model'", "known:")
