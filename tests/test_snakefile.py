"""examples/Snakefile: metcli's chain as a Snakemake workflow (issue 16, item 3).

A synthetic cohort of 8 participants (4 colorectal, 4 pancreatic, the small phantoms)
runs through the workflow from synth's true masks (the workflow's ``segmentations`` key,
as test_slurm.py starts from them) with the smallest options test_slurm.py uses: one
logistic regression without a sampler, 2 held-out test patients, 200 bootstrap
resamples. The same metcli commands are run over the whole cohort at once, as
examples/run_demo.sh does, and every table must be byte-for-byte equal and every lesion
map voxel-for-voxel. Then one participant's input changes and a dry run must plan only
that participant's jobs and the group jobs after them. The segment rule is run for one
participant with the demo nnU-Net model and compared with ``metcli segment``. Skips where
snakemake is not installed (``pip install -e '.[test]'`` installs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("snakemake", reason="snakemake not installed (pip install snakemake)")

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "examples" / "Snakefile"
PROFILE = REPO / "examples" / "snakemake_profile" / "config.yaml"
LABELS = [f"{i:03d}" for i in range(1, 9)]
TRAIN_ARGS = (
    "--classifiers logistic-regression --sampler none --cv-folds 3 --cv-repeats 1 "
    "--inner-folds 2 --importance-trees 20 --importance-repeats 2"
)
EVALUATE_ARGS = "--bootstrap 200"
ANAT = "sub-{0}/anat/sub-{0}_ce-portal"
TIMEOUT_S = 300


def _tool(name: str) -> list[str]:
    """This interpreter's console script NAME (the checkout's virtual environment)."""
    script = Path(sys.executable).with_name(name)
    if script.exists():
        return [str(script)]
    module = {"metcli": "metcli.cli.main", "snakemake": "snakemake"}[name]
    return [sys.executable, "-m", module]


def metcli(*args) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*_tool("metcli"), *[str(a) for a in args], "--no-progress"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, f"metcli {args[0]}: {result.stderr}"
    return result


def snakemake(work: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*_tool("snakemake"), "-s", str(SNAKEFILE), "--configfile", "config.yaml", *args],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    if check:
        assert result.returncode == 0, f"snakemake {args}:\n{result.stdout}\n{result.stderr}"
    return result


def planned(output: str) -> dict[str, int]:
    """{rule: jobs} of a dry run's "Job stats" table."""
    table = output.split("Job stats:", 1)[1].split("\ntotal", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def write_config(work: Path, **values) -> None:
    config = {
        "rawdata": "cohort/rawdata",
        "derivatives": "derivatives",
        "segmentations": "cohort/derivatives/truth",
        "metcli": " ".join(_tool("metcli")),
        "seed": 0,
        "threads": {"segment": 1, "extract": 1, "train_radiomics": 1},
        "test_patients": 2,
        "train_radiomics_args": TRAIN_ARGS,
        "evaluate_args": EVALUATE_ARGS,
    }
    config.update(values)
    (work / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The cohort, the workflow's run of it and the shell chain's run of it."""
    work = tmp_path_factory.mktemp("snakemake")
    metcli(
        "synth",
        work / "cohort",
        *"--colorectal 4 --pancreatic 4 --seed 0 --no-truth-lesions -q".split(),
    )
    write_config(work)
    snakemake(work, "--cores", "2", "--config", "seed=0")
    raw, truth, chain = work / "cohort/rawdata", work / "cohort/derivatives/truth", work / "chain"
    labels = raw / "participants.tsv"
    metcli("split-lesions", truth, chain / "lesions")
    metcli("extract", raw, chain / "lesions", chain / "radiomics", "--jobs", 2)
    holdout = ["--protocol", "holdout", "--test-patients", 2, "--seed", 0, *TRAIN_ARGS.split()]
    metcli("train-radiomics", chain / "radiomics", chain / "models", "--labels", labels, *holdout)
    results = _rows(chain / "models/results.tsv")
    model = next(row["model"] for row in results if row["selected_by_cv"] == "true")
    test = [r["participant_id"] for r in _rows(chain / "models/split.tsv") if r["set"] == "test"]
    select = [arg for label in test for arg in ("--participant-label", label)]
    metcli(
        "predict",
        chain / "models" / model,
        chain / "radiomics",
        chain / "predict",
        *select,
        "--level",
        "both",
    )
    metcli(
        "evaluate",
        chain / "predict",
        chain / "evaluation",
        "--labels",
        labels,
        "--raw",
        raw,
        "--lesions",
        chain / "lesions",
        "--seed",
        0,
        *EVALUATE_ARGS.split(),
    )
    return {"work": work, "flow": work / "derivatives", "chain": chain, "test": test}


def _rows(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


def _voxels(path: Path):
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin()


def test_the_workflow_writes_what_the_shell_chain_writes(runs):
    flow, chain = runs["flow"], runs["chain"]
    for label in LABELS:
        anat = ANAT.format(label)
        for name in (
            f"lesions/{anat}_desc-lesions_dseg.tsv",
            f"radiomics/{anat}_desc-radiomics_features.tsv",
        ):
            assert (flow / name).read_bytes() == (chain / name).read_bytes(), name
        lesion_map = f"lesions/{anat}_desc-lesions_dseg.nii.gz"
        ours, theirs = _voxels(flow / lesion_map), _voxels(chain / lesion_map)
        assert np.array_equal(ours[0], theirs[0]) and ours[1:] == theirs[1:], lesion_map
        assert (flow / f"lesions/{anat}_desc-lesions_dseg.json").is_file()
        assert (flow / f"radiomics/{anat}_desc-radiomics_features.json").is_file()
    for name in (
        "lesions/lesions.tsv",
        "lesions/tumour_burden.tsv",
        "radiomics/features.tsv",
        "models/results.tsv",
        "models/split.tsv",
        "models/predictions.tsv",
        "predict/predictions.tsv",
        "evaluation/metrics.tsv",
    ):
        assert (flow / name).read_bytes() == (chain / name).read_bytes(), name
    predicted = {row["participant_id"] for row in _rows(flow / "predict/predictions.tsv")}
    assert predicted == set(runs["test"]) and len(predicted) == 2
    assert "<html" in (flow / "evaluation/report.html").read_text().lower()
    # the cohort was segmented already: no segment folder, no segment job
    assert not (flow / "segment").exists()
    assert (flow / "logs/split-lesions/sub-001.log").is_file()


def test_a_changed_participant_reruns_only_its_own_jobs_and_the_group(runs, tmp_path):
    work = tmp_path / "copy"
    shutil.copytree(runs["work"], work, symlinks=True)  # keeps mtimes and .snakemake/
    assert "Nothing to be done" in snakemake(work, "-n").stdout

    import SimpleITK as sitk

    dseg = work / "cohort/derivatives/truth" / f"{ANAT.format('003')}_dseg.nii.gz"
    image = sitk.ReadImage(str(dseg))
    voxels = sitk.GetArrayFromImage(image)
    voxels[tuple(np.argwhere(voxels == 1)[0])] = 0  # one liver voxel less
    changed = sitk.GetImageFromArray(voxels)
    changed.CopyInformation(image)
    sitk.WriteImage(changed, str(dseg), True)

    out = snakemake(work, "-n").stdout
    assert planned(out) == {
        "split_lesions": 1,
        "extract": 1,
        "split_lesions_group": 1,
        "extract_group": 1,
        "train_radiomics": 1,
        "predict": 1,
        "evaluate": 1,
        "all": 1,
    }, out
    assert set(re.findall(r"wildcards: participant=(\w+)", out)) == {"003"}, out

    # another option of one step: only that step (params are a rerun trigger)
    again = tmp_path / "again"
    shutil.copytree(runs["work"], again, symlinks=True)
    write_config(again, evaluate_args="--bootstrap 300")
    out = snakemake(again, "-n").stdout
    assert planned(out) == {"evaluate": 1, "all": 1}, out


def test_lint_dry_run_and_the_slurm_profile(runs, tmp_path):
    work = runs["work"]
    lint = snakemake(work, "--lint", "--config", "container=metcli.sif", "segmentations=")
    assert "good condition" in lint.stdout + lint.stderr
    # the profile without the SLURM executor (its plugin is not installed here): its
    # resources and threads apply to the jobs of a dry run from scratch
    profile = yaml.safe_load(PROFILE.read_text())
    assert profile["executor"] == "slurm"
    rules = set(snakemake(work, "--list-rules", "--config", "segmentations=").stdout.split())
    assert set(profile["set-resources"]) | set(profile["set-threads"]) <= rules
    local = tmp_path / "profile"
    local.mkdir()
    del profile["executor"]
    (local / "config.yaml").write_text(yaml.safe_dump(profile))
    out = snakemake(
        work, "-n", "--profile", str(local), "--config", "segmentations=", "train_cnn=true"
    ).stdout
    jobs = planned(out)
    assert jobs["segment"] == jobs["split_lesions"] == jobs["extract"] == len(LABELS), out
    assert jobs["train_cnn"] == jobs["segment_group"] == 1, out
    assert re.search(r"rule segment:(?:\n    .*)*\n    resources: .*gres=gpu:1", out), out


def test_the_segment_rule_writes_what_metcli_segment_writes(runs, tmp_path):
    work = runs["work"]
    target = f"segmented/segment/{ANAT.format('001')}_dseg.nii.gz"
    snakemake(
        work,
        "--cores",
        "1",
        target,
        "--config",
        "segmentations=",
        "derivatives=segmented",
        "participants=sub-001",
    )
    assert sorted(p.name for p in (work / target).parent.iterdir()) == [
        "sub-001_ce-portal_dseg.json",
        "sub-001_ce-portal_dseg.nii.gz",
    ]
    metcli(
        "segment",
        work / "cohort/rawdata",
        tmp_path / "segment",
        "--participant-label",
        "001",
        "--no-tta",
        "--threads",
        1,
        "-q",
    )
    ours = _voxels(work / target)
    theirs = _voxels(tmp_path / f"segment/{ANAT.format('001')}_dseg.nii.gz")
    assert np.array_equal(ours[0], theirs[0]) and ours[1:] == theirs[1:]
    assert set(np.unique(ours[0])) <= {0, 1, 2} and (ours[0] == 1).any()
