"""docs/walkthrough.md, run: every ```bash block of the page, in order, on synthetic data.

The page is the source of truth. Its first ```bash block holds only the settings
(VARIABLE=value lines: the user's folders and how much compute); the test replaces it
with its own values, which must set the same names, and runs that plus every later
```bash block as one script under ``bash -euo pipefail``, in a temporary folder, with
this installation's ``metcli`` first on PATH. The inputs are made here as a radiology
group would hand them over, from tiny ``metcli synth`` phantoms (48 x 48 x 24 voxels):

- ``dicom/<patient>/portal/*.dcm``: synth's DICOM series with a patient name, ID,
  birth date and accession number written into the headers (none may reach metcli's
  outputs); two patients also get an arterial series of the same size, so the series
  must be chosen (``--series-description``);
- ``primaries.csv``: patient_id, primary, age, sex as a spreadsheet exports them
  (capitalised classes, ``male``/``female``);
- ``masks/<patient>/``: synth's true masks as a NIfTI label image, for one patient as an
  RTSTRUCT (contours traced on each slice) and for one as a DICOM-SEG (highdicom);
- ``new/<patient>/``: one more patient's DICOM, to classify at the end;
- ``weights.zip``: an archive in the layout of a manifest model, for the offline fetch;
- ``readers.tsv``: a radiologist's calls on the test patients.

```console blocks (a machine with internet, a SLURM login node, Snakemake) are checked
with ``bash -n`` and run with stand-ins: the download from a file server on 127.0.0.1
(with a copy of the manifest naming it), ``apptainer``, ``sbatch`` and ``squeue`` as
scripts that record their arguments, ``snakemake`` as a dry run where it is installed.
The settings are tiny (1 epoch, 1 iteration, 32-pixel CNN input), so the figures mean
nothing: the test checks that every command runs and writes what the page says.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO

DOC = REPO / "docs" / "walkthrough.md"
BIN = Path(sys.executable).parent
#: synth participant -> the group's study code (letters and digits, not a hospital ID).
CODES = {f"{i:03d}": f"LM{i:02d}" for i in range(1, 10)}
NEW = "LM09"  # the patient who arrives later
TWO_SERIES = ("LM01", "LM04")  # patients whose folder also holds an arterial series
RTSTRUCT, DICOM_SEG = "LM02", "LM03"  # manual masks in these formats; the others NIfTI
#: identity in the DICOM headers, per study code; none of it may appear in an output
IDENTITY = {
    code: (f"Doe^Pat{code}", f"H99{code[2:]}123", f"A77{code[2:]}55") for code in CODES.values()
}
WEIGHTS_MODEL = "totalsegmentator-liver-vessels"


# ----------------------------------------------------------------------------- inputs
def _synth(root: Path) -> Path:
    """Nine tiny phantoms with their DICOM series and true masks."""
    from metcli.synth.phantom import Grid
    from metcli.synth.synth import synth_cohort

    grid = Grid(shape=(48, 48, 24), spacing=(4.0, 4.0, 5.0), anatomy_scale=0.45)
    return synth_cohort(
        root / "synth", n_colorectal=5, n_pancreatic=4, seed=3, size=grid, dicom=True,
        truth_lesions=False,
    )  # fmt: skip


def _copy_series(source: Path, target: Path, code: str, *, arterial: bool = False) -> list:
    """synth's series of one participant, with identity in its headers (and, for the
    arterial copy, new UIDs and description); returns the written datasets."""
    import pydicom
    from pydicom.uid import generate_uid

    name, patient_id, accession = IDENTITY[code]
    series_uid = generate_uid()
    target.mkdir(parents=True)
    written = []
    for path in sorted(source.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID, ds.AccessionNumber = name, patient_id, accession
        ds.PatientBirthDate = "19580314"
        if arterial:
            ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, 3
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.SeriesDescription = "ABDOMEN ARTERIAL 5.0 B30f"
        ds.save_as(target / path.name, enforce_file_format=True)
        written.append(ds)
    return written


def _rtstruct(path: Path, truth, series) -> None:
    """An RTSTRUCT of the true liver and lesions: contours traced on every slice."""
    from skimage.measure import find_contours
    from test_import_mask import write_rtstruct

    labels = sitk_array(truth)
    rois: dict[str, list[np.ndarray]] = {"Liver": [], "Metastases": []}
    for k in range(labels.shape[0]):
        for roi, mask in (("Liver", labels[k] >= 1), ("Metastases", labels[k] == 2)):
            for contour in find_contours(np.pad(mask, 1).astype(float), 0.5):
                points = [
                    truth.TransformContinuousIndexToPhysicalPoint((c - 1.0, r - 1.0, float(k)))
                    for r, c in contour[:-1]
                ]
                rois[roi].append(np.asarray(points))
    write_rtstruct(
        path, rois, frame_uid=series[0].FrameOfReferenceUID,
        series_uid=series[0].SeriesInstanceUID,
    )  # fmt: skip


def _dicom_seg(path: Path, truth, series) -> None:
    """A DICOM-SEG (BINARY, MANUAL) of the true liver and lesions on the CT's slices."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    ordered = sorted(series, key=lambda ds: float(ds.ImagePositionPatient[2]))
    labels = sitk_array(truth)
    assert np.isclose(float(ordered[0].ImagePositionPatient[2]), truth.GetOrigin()[2])
    kinds = {
        "Liver": (codes.SCT.Organ, codes.SCT.Liver),
        "Lesion": (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm),
    }
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )  # fmt: skip
        for number, (label, (category, kind)) in enumerate(kinds.items(), start=1)
    ]
    pixels = np.stack([labels >= 1, labels == 2], axis=-1).astype(np.uint8)
    hd.seg.Segmentation(
        source_images=ordered, pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=99,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="a viewer",
        manufacturer_model_name="contouring", software_versions="1", device_serial_number="1",
    ).save_as(path)  # fmt: skip


def sitk_array(image) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image)


def _weights_zip(path: Path) -> str:
    """An archive in the layout of an nnU-Net v2 download; returns its sha256."""
    folder = "Dataset008_HepaticVessel/nnUNetTrainer__nnUNetPlans__3d_fullres"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{folder}/dataset.json", json.dumps({"labels": {"background": 0}}))
        archive.writestr(f"{folder}/plans.json", json.dumps({"plans_name": "nnUNetPlans"}))
        archive.writestr(f"{folder}/fold_0/checkpoint_final.pth", b"weights" * 1000)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_inputs(root: Path) -> dict:
    """The group's inputs (see the module docstring); returns the settings' values."""
    import SimpleITK as sitk

    synth = _synth(root)
    with open(synth / "rawdata" / "participants.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    code = {r["participant_id"]: CODES[r["participant_id"][4:]] for r in rows}
    primary = {code[r["participant_id"]]: r["primary"] for r in rows}
    new = [c for c in primary if primary[c] == "colorectal"][-1]
    study = [c for c in primary if c != new]
    test = [[c for c in study if primary[c] == k][-1] for k in ("colorectal", "pancreatic")]
    dicom, masks, inputs = root / "dicom", root / "masks", {}
    with open(root / "primaries.csv", "w", newline="") as handle:
        sheet = csv.writer(handle)
        sheet.writerow(["patient_id", "primary", "age", "sex"])
        for row in rows:
            c = code[row["participant_id"]]
            if c != new:
                sex = {"M": "male", "F": "female"}[row["sex"]]
                sheet.writerow([c, row["primary"].capitalize(), row["age"], sex])
    for participant, c in code.items():
        source = synth / "sourcedata" / "dicom" / participant
        series = _copy_series(source, (root / "new" if c == new else dicom) / c / "portal", c)
        if c in TWO_SERIES:
            _copy_series(source, dicom / c / "arterial", c, arterial=True)
        if c == new:
            continue
        truth_path = synth / "derivatives" / "truth" / participant / "anat"
        truth_path = truth_path / f"{participant}_ce-portal_dseg.nii.gz"
        (masks / c).mkdir(parents=True)
        if c == RTSTRUCT:
            _rtstruct(masks / c / "RS.dcm", sitk.ReadImage(str(truth_path)), series)
        elif c == DICOM_SEG:
            _dicom_seg(masks / c / "SEG.dcm", sitk.ReadImage(str(truth_path)), series)
        else:
            shutil.copyfile(truth_path, masks / c / f"{c}_liver_lesions.nii.gz")
        inputs[c] = truth_path
    with open(root / "readers.tsv", "w") as handle:
        handle.write("participant_id\treader\tcall\tassisted\n")
        for c in test:
            handle.write(f"sub-{c}\tR1\t{primary[c]}\tno\n")
    return {
        "truth": inputs, "test": test, "new": new, "primary": primary,
        "weights_sha256": _weights_zip(root / "weights.zip"),
    }  # fmt: skip


# ----------------------------------------------------------------------------- the page
def blocks() -> list[tuple[str, str, int]]:
    """(language, code, line number) of every fenced block of the page, in order."""
    text = DOC.read_text(encoding="utf-8")
    found = []
    for match in re.finditer(r"^```([\w-]*)\n(.*?)^```$", text, flags=re.M | re.S):
        found.append((match[1], match[2], text.count("\n", 0, match.start()) + 1))
    return found


def assigned(code: str) -> dict[str, bool]:
    """Names a settings block assigns -> whether it exports them."""
    names = {}
    for line in code.splitlines():
        match = re.match(r"\s*(export\s+)?([A-Z][A-Z0-9_]*)=", line)
        if match:
            names[match[2]] = bool(match[1])
    return names


def _train_seg_options() -> list[str]:
    """The tiniest training train-seg offers, from the options it has now (its option
    names may still change: those it lacks are left out, which only costs time)."""
    import click

    from metcli.cli.main import cli

    command = cli.get_command(click.Context(cli), "train-seg")
    have = {opt for param in command.params for opt in param.opts}
    wanted = [("--plan", "small"), ("--epochs", "1"), ("--iterations-per-epoch", "1"),
              ("--jobs", "0"), ("--device", "cpu"), ("--threads", "1")]  # fmt: skip
    return [word for option, value in wanted if option in have for word in (option, value)]


def tiny_settings(root: Path, made: dict) -> dict[str, str]:
    """The test's values of the settings block (bash right-hand sides)."""
    q = shlex.quote
    radiomics = (
        "--classifiers logistic-regression,naive-bayes --sampler none --cv-folds 3 "
        "--cv-repeats 1 --inner-folds 2 --importance-trees 10 --importance-repeats 2"
    )
    return {
        "DICOM": q(str(root / "dicom")),
        "SHEET": q(str(root / "primaries.csv")),
        "MASKS": q(str(root / "masks")),
        "TEST_PATIENTS": q(" ".join(made["test"])),
        "READERS": q(str(root / "readers.tsv")),
        "NEW_DICOM": q(str(root / "new")),
        "WORK": q(str(root / "work")),
        "METCLI_SRC": q(str(REPO)),
        "METCLI_HOME": q(str(root / "metcli-home")),
        "WEIGHTS_ZIP": q(str(root / "weights.zip")),
        "WEIGHTS_SHA256": made["weights_sha256"],
        "JOBS": "2",
        "SEG_OPTIONS": f"({' '.join(_train_seg_options())})",
        "SEGMENT_OPTIONS": "(--no-tta --device cpu --threads 1)",
        "RADIOMICS_OPTIONS": f"({radiomics})",
        "CNN_OPTIONS": "(--size 32 --epochs 1 --val-patients 2 --device cpu --threads 1)",
        "EVALUATE_OPTIONS": "(--bootstrap 200)",
    }


def clean_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a user's shell: this installation first on PATH, HOME and
    TMPDIR inside the test's folder, no METCLI_ variable from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METCLI_", "SLURM_"))}
    (root / "home").mkdir(exist_ok=True)
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HOME=str(root / "home"))
    env.update(MPLBACKEND="Agg", **extra)
    return env


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    """Every ```bash block of the page, run once on the synthetic inputs."""
    pytest.importorskip("nnunetv2", reason="train-seg and segment need nnunetv2")
    pytest.importorskip("skimage", reason="the RTSTRUCT fixture traces contours with skimage")
    root = tmp_path_factory.mktemp("walkthrough")
    made = make_inputs(root)
    settings_block, *rest = [b for b in blocks() if b[0] == "bash"]
    values = tiny_settings(root, made)
    exported = assigned(settings_block[1])
    lines = [f"{'export ' if exported[name] else ''}{name}={values[name]}" for name in exported]
    parts = ["\n".join(lines)]
    for number, (_, code, line) in enumerate(rest, start=2):
        parts.append(f'echo "### walkthrough.md block {number} (line {line})" >&2\n{code}')
    script = root / "walkthrough.sh"
    script.write_text("\n".join(parts), encoding="utf-8")
    (root / "cwd").mkdir()
    started = time.monotonic()
    done = subprocess.run(
        ["bash", "-euo", "pipefail", str(script)], cwd=root / "cwd", env=clean_env(root),
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    seconds = time.monotonic() - started
    print(f"walkthrough.md: {len(rest) + 1} bash blocks ran in {seconds:.0f} s")
    return {"root": root, "work": root / "work", "made": made, "done": done, "seconds": seconds}


# ----------------------------------------------------------------------------- tests
def test_the_settings_block_is_the_one_the_test_replaces(tmp_path):
    kinds = [kind for kind, _, _ in blocks()]
    assert kinds[0] == "bash" and set(kinds) == {"bash", "console"}, kinds
    settings = blocks()[0][1]
    code = [line for line in settings.splitlines() if line.strip() and not line.startswith("#")]
    assert all(re.match(r"(export )?[A-Z][A-Z0-9_]*=", line) for line in code), code
    made = {"test": ["LM06", "LM09"], "weights_sha256": "0" * 64}
    assert set(assigned(settings)) == set(tiny_settings(tmp_path, made))


#: the commands each options array of the settings block is given to
OPTION_ARRAYS = {
    "SEG_OPTIONS": ("train-seg",),
    "SEGMENT_OPTIONS": ("segment",),
    "RADIOMICS_OPTIONS": ("train-radiomics",),
    "CNN_OPTIONS": ("train-cnn",),
    "EVALUATE_OPTIONS": ("evaluate", "evaluate-seg"),
}


def test_the_options_of_both_settings_are_options_of_their_commands(tmp_path):
    """The page's values (a real study's, never run here) and the test's parse."""
    import click

    from metcli.cli.main import cli

    folder, table = tmp_path / "in", tmp_path / "participants.tsv"
    folder.mkdir()
    table.write_text("participant_id\tprimary\n")
    out, labels = str(tmp_path / "out"), ["--labels", str(table)]
    positional = {
        "train-seg": [str(folder), str(folder), out],
        "segment": [str(folder), out],
        "train-radiomics": [str(folder), out, *labels],
        "train-cnn": [str(folder), str(folder), out, *labels],
        "evaluate": [str(folder), out, *labels],
        "evaluate-seg": [str(folder), str(folder), out],
    }
    page = dict(re.findall(r"^([A-Z_]+)=(\(.*?\))", blocks()[0][1], flags=re.M))
    ours = tiny_settings(tmp_path, {"test": ["LM06"], "weights_sha256": "0" * 64})
    for values in (page, ours):
        for array, commands in OPTION_ARRAYS.items():
            words = shlex.split(values[array][1:-1])
            for name in commands:
                command = cli.get_command(click.Context(cli), name)
                command.make_context(name, [*positional[name], *words])  # raises if wrong


def _read(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _anat(root: Path, code: str, suffix: str) -> Path:
    return root / f"sub-{code}" / "anat" / f"sub-{code}_ce-portal_{suffix}"


@pytest.mark.slow
def test_every_bash_block_runs_and_writes_what_the_page_says(walkthrough):
    done, work, made = walkthrough["done"], walkthrough["work"], walkthrough["made"]
    assert done.returncode == 0, f"{done.stderr[-6000:]}\n--- stdout ---\n{done.stdout[-3000:]}"
    raw, d = work / "rawdata", work / "derivatives"
    study = sorted(made["truth"])
    rows = list(csv.DictReader((raw / "participants.tsv").open(), delimiter="\t"))
    assert [r["participant_id"] for r in rows] == [f"sub-{c}" for c in study]
    assert all(r["primary"] == made["primary"][r["participant_id"][4:]] for r in rows)
    assert {r["sex"] for r in rows} <= {"M", "F"} and all(float(r["age"]) > 0 for r in rows)
    split = dict(line.split("\t") for line in (work / "split.tsv").read_text().splitlines()[1:])
    assert sorted(c for c, s in split.items() if s == "test") == [f"sub-{c}" for c in made["test"]]
    for code in TWO_SERIES:  # the portal series was chosen, not the arterial one
        sidecar = json.loads(_anat(raw, code, "ct.json").read_text())
        assert "portal" in sidecar["SeriesDescription"] and "DicomSource" in sidecar
    import pydicom  # the series' UIDs are in DicomSource only (the rest keeps their sha256)

    header = pydicom.dcmread(next((walkthrough["root"] / "dicom" / study[0] / "portal").glob("*")))
    sidecar = json.loads(_anat(raw, study[0], "ct.json").read_text())
    source = sidecar.pop("DicomSource")
    assert source["SeriesInstanceUID"] == header.SeriesInstanceUID
    for uid in (header.StudyInstanceUID, header.SeriesInstanceUID, header.FrameOfReferenceUID):
        assert uid not in json.dumps(sidecar)
    # the manual masks came back as they were drawn (the RTSTRUCT as traced contours)
    for code, truth_path in made["truth"].items():
        imported, truth = _read(_anat(d / "masks", code, "dseg.nii.gz")), _read(truth_path)
        if code == RTSTRUCT:
            for label in (1, 2):
                a, b = imported >= label, truth >= label
                assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9, (code, label)
        else:
            np.testing.assert_array_equal(imported, truth, err_msg=code)
    formats = {c: json.loads(_anat(d / "masks", c, "dseg.json").read_text())["MaskFormat"]
               for c in (RTSTRUCT, DICOM_SEG, study[0])}  # fmt: skip
    assert formats == {RTSTRUCT: "RTSTRUCT", DICOM_SEG: "DICOM-SEG", study[0]: "label-image"}
    for code in (RTSTRUCT, DICOM_SEG):  # --strict checked them against the imported series
        checks = json.loads(_anat(d / "masks", code, "dseg.json").read_text())["DicomChecks"]
        assert checks["frame_of_reference"]["match"] and checks["referenced_series"]["match"]
    home = walkthrough["root"] / "metcli-home" / "models" / WEIGHTS_MODEL
    assert (home / ".metcli-install.json").is_file()
    model = work / "models" / "liver-lesions"
    assert (model / "SHA256SUMS").is_file() and (
        model / "fold_0" / "checkpoint_final.pth"
    ).is_file()
    # segment ran on the test patients only, with a DICOM-SEG that reads back voxel for voxel
    assert sorted(p.name for p in (d / "segment").glob("sub-*")) == [
        f"sub-{c}" for c in made["test"]
    ]
    first = made["test"][0]
    assert _anat(d / "segment", first, "dseg.dcm").is_file()
    np.testing.assert_array_equal(
        _read(_anat(work / "dicom-seg-check", first, "dseg.nii.gz")),
        _read(_anat(d / "segment", first, "dseg.nii.gz")),
    )
    overlap = list(csv.DictReader((d / "segment-vs-manual" / "overlap.tsv").open(), delimiter="\t"))
    assert {r["participant_id"] for r in overlap} == {f"sub-{c}" for c in made["test"]}
    # the classifiers were tested on the test patients only, and the report was written
    predicted = list(csv.DictReader((d / "models" / "predictions.tsv").open(), delimiter="\t"))
    assert {r["participant_id"] for r in predicted} == {f"sub-{c}" for c in made["test"]}
    for name in ("report.html", "table1.tsv", "readers.tsv", "comparisons.tsv"):
        assert (d / "evaluation" / name).is_file(), name
    for folder in ("predictions", "predictions-cnn"):
        new = list(
            csv.DictReader((work / "new" / folder / "predictions.tsv").open(), delimiter="\t")
        )
        assert {(r["participant_id"], r["level"]) for r in new} >= {
            (f"sub-{made['new']}", "patient")
        }
    assert list((work / "cluster" / "derivatives" / "radiomics").glob(f"sub-{study[0]}/anat/*.tsv"))
    print(f"walkthrough.md ran in {walkthrough['seconds']:.0f} s")


@pytest.mark.slow
def test_no_patient_identity_reaches_the_outputs(walkthrough):
    assert walkthrough["done"].returncode == 0
    assert "identifying values searched" in walkthrough["done"].stdout
    secrets = {s for values in IDENTITY.values() for s in values} | {"19580314"}
    for path in walkthrough["work"].rglob("*"):
        if path.is_file() and path.suffix in (".json", ".tsv", ".html", ".yaml", ".csv"):
            text = path.read_text(errors="ignore")
            assert not [s for s in secrets if s in text], path


def test_the_pages_links_lead_somewhere_and_the_readme_links_the_page():
    def slug(heading: str) -> str:
        return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))

    text = DOC.read_text(encoding="utf-8")
    for target, anchor in re.findall(r"\]\(([\w./-]+\.md)(?:#([\w-]+))?\)", text):
        page = DOC.parent / target
        assert page.is_file(), target
        if anchor:
            headings = re.findall(r"^#+ (.*)$", page.read_text(encoding="utf-8"), flags=re.M)
            assert anchor in {slug(h) for h in headings}, f"{target}#{anchor}"
    assert "docs/walkthrough.md" in (REPO / "README.md").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- console blocks
#: what tells each ```console block apart; each is run below with stand-ins
STAND_INS = ("metcli weights fetch", "apptainer build", "snakemake -s")


def _console(key: str) -> str:
    (code,) = [code for kind, code, _ in blocks() if kind == "console" and key in code]
    return code


def test_console_blocks_are_valid_bash_and_each_is_run_with_stand_ins():
    console = [(code, line) for kind, code, line in blocks() if kind == "console"]
    for code, line in console:
        done = subprocess.run(["bash", "-n"], input=code, text=True, capture_output=True)
        assert done.returncode == 0, (line, done.stderr)
        assert sum(key in code for key in STAND_INS) == 1, f"line {line}: no test runs it"
    assert len(console) == len(STAND_INS)


@pytest.fixture
def file_server(tmp_path):
    """A file server on 127.0.0.1 for tmp_path/served; yields (base URL, folder, paths hit)."""
    import functools
    import http.server
    import threading

    folder, hits = tmp_path / "served", []
    folder.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 - http.server's name
            hits.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder))
    )
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", folder, hits
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_download_block_fetches_checks_and_installs(file_server, runner, monkeypatch, tmp_path):
    """The internet fetch, with the manifest's URL pointed at a local file server."""
    from conftest import invoke
    from metcli.io import weights

    base, folder, hits = file_server
    sha = _weights_zip(folder / "model.zip")
    manifest = json.loads((REPO / "weights" / "manifest.json").read_text(encoding="utf-8"))
    (entry,) = [m for m in manifest["models"] if m["name"] == WEIGHTS_MODEL]
    entry["url"] = f"{base}/model.zip"
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest), encoding="utf-8")
    monkeypatch.setattr(weights, "manifest_path", lambda: path)
    (line,) = [x for x in _console("metcli weights fetch").splitlines() if x.startswith("metcli")]
    monkeypatch.setenv("WEIGHTS_SHA256", "1" * 64)  # not the archive's: refused, nothing kept
    words = [os.path.expandvars(word) for word in shlex.split(line)][1:]
    refused = invoke(runner, words, expect=1)
    assert "refused and removed" in refused.stderr
    assert not list(weights.models_dir().glob("*")), "a refused download left files"
    monkeypatch.setenv("WEIGHTS_SHA256", sha)
    words = [os.path.expandvars(word) for word in shlex.split(line)][1:]
    installed = Path(invoke(runner, words).stdout.strip())
    assert hits == ["/model.zip", "/model.zip"]
    assert (installed / "plans.json").is_file() and installed.is_relative_to(weights.models_dir())
    verified = invoke(runner, ["weights", "verify", WEIGHTS_MODEL])
    assert f"{WEIGHTS_MODEL}\tunverified\t3 file(s) match the install record" in verified.stdout


def test_the_cluster_block_submits_the_array_and_the_group_job(tmp_path):
    """apptainer, sbatch and squeue as scripts that record their arguments (and the
    settings sbatch passes on to the jobs)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    record = f'printf "%s %s\\n" "$(basename "$0")" "$*" >> "{calls}"\n'
    stand_ins = {
        "apptainer": record + 'if [ "$1" = build ]; then : > "$2"; fi\n',
        "sbatch": record + f'printf "  SEG_DIR=%s TRAIN=%s SIF=%s\\n" "$METCLI_SEG_DIR" '
        f'"$METCLI_TRAIN_ARGS" "$METCLI_SIF" >> "{calls}"\n'
        f'echo $((4000 + $(grep -c ^sbatch "{calls}")))\n',
        "squeue": record,
    }
    for name, body in stand_ins.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    src = tmp_path / "metcli"  # a checkout: the image is built inside it
    src.mkdir()
    (src / "containers").symlink_to(REPO / "containers")
    shutil.copy(REPO / "Apptainerfile", src)
    raw, work = tmp_path / "raw", tmp_path / "work"
    raw.mkdir()
    (raw / "participants.tsv").write_text(
        "participant_id\tprimary\n" + "".join(f"sub-LM0{i}\tcolorectal\n" for i in range(1, 9))
    )
    env = clean_env(tmp_path, RAW=str(raw), D=str(work / "derivatives"), WORK=str(work))
    env.update(METCLI_SRC=str(src), USER="radiology", PATH=f"{bin_dir}{os.pathsep}{env['PATH']}")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _console("apptainer build")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["4001", "4002"]
    lines = calls.read_text().splitlines()
    assert lines[0] == "apptainer build metcli.sif Apptainerfile" and (src / "metcli.sif").is_file()
    settings = (
        f"  SEG_DIR={work}/derivatives/masks TRAIN=--protocol holdout --split {work}/split.tsv "
        f"SIF={src}/metcli.sif"
    )
    array, group = lines[1], lines[3]
    assert "--array=0-1 " in array and "--partition=cpu --time=02:00:00" in array
    assert array.endswith(f"participant.sh {raw} {work}/cluster") and lines[2] == settings
    assert "--dependency=afterok:4001" in group and group.endswith(f"group.sh {raw} {work}/cluster")
    assert lines[4] == settings and lines[5] == "squeue -u radiology"


@pytest.mark.slow
def test_the_snakemake_block_plans_the_chain_from_the_masks(walkthrough):
    pytest.importorskip("snakemake", reason="snakemake not installed (pip install snakemake)")
    assert walkthrough["done"].returncode == 0
    dry_run, *_ = _console("snakemake -s").splitlines()
    assert dry_run.endswith(" -n")
    work = walkthrough["work"]
    env = clean_env(walkthrough["root"], WORK=str(work), METCLI_SRC=str(REPO))
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", dry_run], env=env, cwd=walkthrough["root"] / "cwd",
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "This was a dry-run" in done.stdout
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", done.stdout, flags=re.M))
    assert jobs["split_lesions"] == "8" and jobs["train_radiomics"] == "1"
    assert "segment" not in jobs  # it starts from the manual masks
