"""containers/slurm/ on a real SLURM: a single-node cluster on localhost, started here.

The fixture starts munged (its own key and socket), slurmctld and slurmd (a generated
slurm.conf: proctrack/linuxproc, task/none, state and spool folders, free ports) in a
temporary folder, and stops them at the end, whatever happened. submit.sh then runs the
participant level as a job array over a synthetic cohort (METCLI_RUNNER=local: this
checkout's metcli instead of the Apptainer image, which needs an engine this machine lacks)
and the dependent group-level job; the test checks every participant's outputs and the
group job's, then resubmits one task alone and checks that it skips the finished work.

Needs root and Debian's slurmctld, slurmd and munge packages (.ci/run installs them);
skips with the reason elsewhere. The job scripts' participant arithmetic is tested without
a cluster at the end of the file.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = REPO / "containers" / "slurm"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo", "scancel")
START_TIMEOUT_S = 30
JOB_TIMEOUT_S = 240

#: The cohort: 6 participants, 2 a task: 3 array tasks, 2 of them at a time on 2 CPUs.
COLORECTAL, PANCREATIC, PER_TASK = 3, 3, 2
#: The participant level starts from synth's true masks (METCLI_SEG_DIR, the switch for
#: existing segmentations): segmenting with the demo nnU-Net model instead took 87 s of
#: the participant level (2 tasks of 3 CTs, --no-tta, load average 7 on 2 cores) against
#: a few seconds; the segment command of the image is run by test_containers.py.
TRAIN_ARGS = (
    "--classifiers logistic-regression --sampler none --cv-folds 3 --cv-repeats 1 "
    "--inner-folds 2 --importance-trees 20 --importance-repeats 2"
)
EVALUATE_ARGS = "--bootstrap 200"
SBATCH_OPTIONS = ["--cpus-per-task=1", "--mem=2G", "--time=10"]


def _metcli_command() -> str:
    """This interpreter's metcli console script (the checkout's installation)."""
    script = Path(sys.executable).with_name("metcli")
    return str(script) if script.exists() else f"{sys.executable} -m metcli.cli.main"


def _why_no_cluster() -> str | None:
    missing = [name for name in DAEMONS + CLIENTS if shutil.which(name, path=_sbin_path()) is None]
    if missing:
        return (
            f"no single-node SLURM here: {', '.join(missing)} not found (Debian: apt-get "
            "install slurmctld slurmd munge; .ci/run does)"
        )
    if os.geteuid() != 0:
        return "starting slurmd and munged needs root (CI runs as root)"
    return None


def _sbin_path() -> str:
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def _free_ports(count: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
        ports.append(sock.getsockname()[1])
    for sock in sockets:
        sock.close()
    return ports


def _node_line() -> str:
    """slurmd -C's description of this machine (CPUs, sockets, memory) as NodeName=localhost."""
    try:
        out = subprocess.run(
            [shutil.which("slurmd", path=_sbin_path()), "-C"],
            text=True,
            capture_output=True,
            timeout=20,
            check=True,
        ).stdout
        fields = out.splitlines()[0].split()[1:]
    except (subprocess.SubprocessError, OSError, IndexError):
        fields = [f"CPUs={os.cpu_count() or 1}"]
    if not any(f.startswith("RealMemory=") for f in fields):
        fields.append(
            f"RealMemory={os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2**20}"
        )
    return f"NodeName=localhost NodeAddr=127.0.0.1 {' '.join(fields)}"


class Cluster:
    """munged, slurmctld and slurmd in ROOT, in the foreground, stopped by stop()."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.logs = root / "log"
        self.procs: dict[str, subprocess.Popen] = {}

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ, SLURM_CONF=str(self.conf), PATH=_sbin_path())
        env.update(extra)
        return env

    def write_config(self) -> None:
        munge = self.root / "munge"
        for folder in (munge, self.root / "state", self.root / "spool", self.logs):
            folder.mkdir(mode=0o755)
        os.chmod(self.root, 0o755)  # munged wants its socket's folders reachable by all
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        ctld_port, slurmd_port = _free_ports(2)
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=metclitest",
                    "SlurmctldHost=localhost",
                    f"SlurmctldPort={ctld_port}",
                    f"SlurmdPort={slurmd_port}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={munge / 'munge.socket'}",
                    f"StateSaveLocation={self.root / 'state'}",
                    f"SlurmdSpoolDir={self.root / 'spool'}",
                    f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
                    f"SlurmdPidFile={self.root / 'slurmd.pid'}",
                    f"SlurmctldLogFile={self.logs / 'slurmctld.log'}",
                    f"SlurmdLogFile={self.logs / 'slurmd.log'}",
                    "SlurmctldDebug=info",
                    "SlurmdDebug=info",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "JobCompType=jobcomp/none",
                    "MpiDefault=none",
                    "SchedulerType=sched/builtin",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU",
                    "ReturnToService=2",
                    "MinJobAge=600",
                    _node_line() + " State=UNKNOWN",
                    "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.logs / f"{name}.out", "wb")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(
            [shutil.which(name, path=_sbin_path()), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env(),
            start_new_session=True,
        )
        log.close()

    def start(self) -> None:
        self.write_config()
        munge = self.root / "munge"
        self._start(
            "munged",
            [
                "--foreground",
                f"--socket={munge / 'munge.socket'}",
                f"--key-file={munge / 'munge.key'}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--seed-file={munge / 'munged.seed'}",
                f"--log-file={self.logs / 'munged.log'}",
            ],
        )
        self._wait(lambda: (munge / "munge.socket").exists(), "munged's socket")
        self._start("slurmctld", ["-D", "-i", "-f", str(self.conf)])
        self._start("slurmd", ["-D", "-N", "localhost", "-f", str(self.conf)])
        self._wait(self._node_idle, "the node to be idle (sinfo)")

    def _node_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-n", "localhost", "-o", "%T", check=False).stdout
        return out.strip() == "idle"

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            dead = [name for name, proc in self.procs.items() if proc.poll() is not None]
            if dead:
                pytest.fail(
                    f"{', '.join(dead)} stopped while waiting for {what}\n" + self.diagnostics()
                )
            if ready():
                return
            time.sleep(0.3)
        pytest.fail(
            f"timed out after {START_TIMEOUT_S} s waiting for {what}\n" + self.diagnostics()
        )

    def run(
        self, *args: str, check: bool = True, env: dict | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            list(args), text=True, capture_output=True, timeout=60, env=env or self.env(), cwd=cwd
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"{' '.join(args)} exited {result.returncode}\nstdout:\n"
                f"{result.stdout}\nstderr:\n{result.stderr}\n" + self.diagnostics()
            )
        return result

    def wait_for_jobs(self, job_ids: list[str], *, logs: Path | None = None) -> None:
        """Poll squeue until the jobs have left the queue (or JOB_TIMEOUT_S)."""
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            queued = self.run(
                "squeue", "-h", "-o", "%i %T %r", "-j", ",".join(job_ids), check=False
            ).stdout.strip()
            if not queued:
                return
            if "DependencyNeverSatisfied" in queued:
                pytest.fail(f"a job's dependency failed:\n{queued}\n" + self.diagnostics(logs))
            time.sleep(1)
        pytest.fail(
            f"jobs {job_ids} not done after {JOB_TIMEOUT_S} s:\n"
            + self.run("squeue", check=False).stdout
            + self.diagnostics(logs)
        )

    def job_states(self, job_id: str) -> dict[str, str]:
        """{task id or job id: JobState} of a job (every task of an array job)."""
        out = self.run("scontrol", "-o", "show", "job", job_id).stdout
        states = {}
        for line in out.splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            states[fields.get("ArrayTaskId", fields["JobId"])] = fields["JobState"]
        return states

    def diagnostics(self, job_logs: Path | None = None) -> str:
        """The daemons' logs and the jobs' logs, for failure messages."""
        parts = []
        files = sorted(self.logs.glob("*"))
        if job_logs is not None and job_logs.is_dir():
            files += sorted(job_logs.glob("*.log"))
        for path in files:
            text = path.read_text(errors="replace")
            parts.append(
                f"----- {path.name} (last 60 lines)\n" + "\n".join(text.splitlines()[-60:])
            )
        return "\n".join(parts)

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run(
                ["scancel", "--full", "--user", "root"],
                env=self.env(),
                capture_output=True,
                timeout=30,
                check=False,
            )
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                left = subprocess.run(
                    ["squeue", "-h"],
                    env=self.env(),
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                )
                if left.returncode != 0 or not left.stdout.strip():
                    break
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


@pytest.fixture(scope="module")
def cluster():
    reason = _why_no_cluster()
    if reason:
        pytest.skip(reason)
    # a short path: munged's socket path must fit a Unix socket address
    root = Path(tempfile.mkdtemp(prefix="metcli-slurm-", dir="/tmp"))
    running = Cluster(root)
    try:
        running.start()
        yield running
    finally:
        running.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pipeline(cluster):
    """A synthetic cohort, submitted with submit.sh and waited for."""
    work = cluster.root / "work"
    work.mkdir()
    metcli = _metcli_command()
    subprocess.run(
        [
            *metcli.split(),
            "synth",
            str(work / "cohort"),
            "--colorectal",
            str(COLORECTAL),
            "--pancreatic",
            str(PANCREATIC),
            "--seed",
            "0",
            "--no-truth-lesions",
            "--no-progress",
            "-q",
        ],
        check=True,
        timeout=300,
    )
    env = cluster.env(
        METCLI_RUNNER="local",
        METCLI_CMD=metcli,
        METCLI_PER_TASK=str(PER_TASK),
        METCLI_SEG_DIR=str(work / "cohort/derivatives/truth"),
        METCLI_TRAIN_ARGS=TRAIN_ARGS,
        METCLI_EVALUATE_ARGS=EVALUATE_ARGS,
        TMPDIR=str(work),
    )
    raw, out = work / "cohort" / "rawdata", work / "out"
    started = time.monotonic()
    result = cluster.run(
        "bash", str(SLURM_DIR / "submit.sh"), str(raw), str(out), *SBATCH_OPTIONS, env=env, cwd=work
    )
    array_id, group_id = result.stdout.split()
    cluster.wait_for_jobs([array_id, group_id], logs=out / "logs")
    print(f"array and group job: {time.monotonic() - started:.1f} s")
    return {
        "raw": raw,
        "out": out,
        "env": env,
        "array": array_id,
        "group": group_id,
        "participants": [f"{i:03d}" for i in range(1, COLORECTAL + PANCREATIC + 1)],
    }


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_the_array_and_the_group_job_write_every_output(cluster, pipeline):
    out, logs = pipeline["out"], pipeline["out"] / "logs"
    message = cluster.diagnostics(logs)
    tasks = cluster.job_states(pipeline["array"])
    assert tasks == {"0": "COMPLETED", "1": "COMPLETED", "2": "COMPLETED"}, f"{tasks}\n{message}"
    assert cluster.job_states(pipeline["group"]) == {pipeline["group"]: "COMPLETED"}, message

    deriv = out / "derivatives"
    for label in pipeline["participants"]:
        anat = f"sub-{label}/anat/sub-{label}_ce-portal"
        for path in (
            deriv / f"lesions/{anat}_desc-lesions_dseg.nii.gz",
            deriv / f"lesions/{anat}_desc-lesions_dseg.tsv",
            deriv / f"lesions/{anat}_desc-lesions_dseg.json",
            deriv / f"radiomics/{anat}_desc-radiomics_features.tsv",
            deriv / f"radiomics/{anat}_desc-radiomics_features.json",
        ):
            assert path.is_file(), f"{path} missing\n{message}"
    assert not (deriv / "segment").exists()  # METCLI_SEG_DIR: the given masks were used
    # each task ran each step once for its 2 participants
    for task, labels in (
        ("0", "sub-001 sub-002"),
        ("1", "sub-003 sub-004"),
        ("2", "sub-005 sub-006"),
    ):
        log = (logs / f"participant-{pipeline['array']}_{task}.log").read_text()
        assert f"participants {labels}\n" in log, log
        assert log.count("segmentations: 2 done, 0 skipped (already done), 0 failed") == 1, log
        assert log.count("CTs: 2 done, 0 skipped (already done), 0 failed") == 1, log

    # the group job: cohort tables over every participant, a model and its evaluation
    everyone = {f"sub-{label}" for label in pipeline["participants"]}
    assert {row["participant_id"] for row in _rows(deriv / "lesions/lesions.tsv")} == everyone
    assert {row["participant_id"] for row in _rows(deriv / "radiomics/features.tsv")} == everyone
    assert (deriv / "models/results.tsv").is_file()
    assert (deriv / "models/logistic-regression_none/model.onnx").is_file()
    assert {
        row["participant_id"] for row in _rows(deriv / "models/oof_predictions.tsv")
    } == everyone
    assert (deriv / "evaluation/metrics.tsv").is_file()
    assert (deriv / "evaluation/report.html").is_file()


def test_a_task_resubmitted_alone_skips_its_finished_outputs(cluster, pipeline):
    out = pipeline["out"]
    features = (
        out / "derivatives/radiomics/sub-004/anat/sub-004_ce-portal_desc-radiomics_features.tsv"
    )
    before = features.stat().st_mtime_ns
    env = dict(pipeline["env"], METCLI_ARRAY="1", METCLI_NO_GROUP="1")
    result = cluster.run(
        "bash",
        str(SLURM_DIR / "submit.sh"),
        str(pipeline["raw"]),
        str(out),
        *SBATCH_OPTIONS,
        env=env,
    )
    array_id, group_id = result.stdout.split()
    assert group_id == "none"
    cluster.wait_for_jobs([array_id], logs=out / "logs")
    assert cluster.job_states(array_id) == {"1": "COMPLETED"}, cluster.diagnostics(out / "logs")
    log = (out / "logs" / f"participant-{array_id}_1.log").read_text()
    assert "participants sub-003 sub-004\n" in log, log
    assert "segmentations: 0 done, 2 skipped (already done), 0 failed" in log, log
    assert "CTs: 0 done, 2 skipped (already done), 0 failed" in log, log
    assert features.stat().st_mtime_ns == before


# ------------------------------------------------------------------ without a cluster
def _bash(script: str, **env: str) -> subprocess.CompletedProcess:
    clean = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("METCLI_", "SLURM_", "CUDA_"))
    }
    clean.update(TMPDIR="/tmp", METCLI_SLURM_DIR=str(SLURM_DIR), **env)
    return subprocess.run(
        ["bash", "-c", script], text=True, capture_output=True, timeout=60, env=clean
    )


@pytest.fixture
def raw_with_five(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "participants.tsv").write_text(
        "participant_id\tprimary\n" + "".join(f"sub-00{i}\tcolorectal\n" for i in range(1, 6))
    )
    return raw


@pytest.mark.parametrize(
    "task, expected", [(0, "sub-001 sub-002"), (1, "sub-003 sub-004"), (2, "sub-005"), (3, "")]
)
def test_array_tasks_split_the_participants_list_in_order(raw_with_five, task, expected):
    result = _bash(
        f'source "$METCLI_SLURM_DIR/common.sh"; '
        f'task_participants "{raw_with_five}" {task} 2 | paste -sd " " -'
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_a_list_of_labels_can_replace_participants_tsv(raw_with_five, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("003\n005\n")
    result = _bash(
        f'source "$METCLI_SLURM_DIR/common.sh"; participant_ids "{raw_with_five}"',
        METCLI_PARTICIPANTS=str(labels),
    )
    assert result.stdout.split() == ["003", "005"]


def test_participant_script_outside_an_array_says_how_to_submit(raw_with_five, tmp_path):
    result = _bash(
        f'bash "$METCLI_SLURM_DIR/participant.sh" "{raw_with_five}" "{tmp_path}/out"',
        METCLI_RUNNER="local",
    )
    assert result.returncode == 1
    assert "sbatch --array" in result.stderr and result.stderr.count("\n") == 1


def test_a_task_beyond_the_list_fails_with_the_list_length(raw_with_five, tmp_path):
    result = _bash(
        f'bash "$METCLI_SLURM_DIR/participant.sh" "{raw_with_five}" "{tmp_path}/out"',
        METCLI_RUNNER="local",
        SLURM_ARRAY_TASK_ID="7",
    )
    assert result.returncode == 1
    assert "array task 7: no participants" in result.stderr and "(5 entries)" in result.stderr


def test_a_missing_participants_list_is_one_line_naming_it(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for script in ("participant.sh", "submit.sh"):
        result = _bash(
            f'bash "$METCLI_SLURM_DIR/{script}" "{raw}" "{tmp_path}/out"',
            METCLI_RUNNER="local",
            SLURM_ARRAY_TASK_ID="0",
            PATH=f"{tmp_path}:/usr/bin:/bin",
        )
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1, result.stderr
        assert f"{raw}/participants.tsv: no participants list" in result.stderr


def test_the_apptainer_runner_names_the_missing_image(raw_with_five, tmp_path):
    result = _bash(
        f'bash "$METCLI_SLURM_DIR/participant.sh" "{raw_with_five}" "{tmp_path}/out"',
        METCLI_RUNNER="apptainer",
        METCLI_SIF=str(tmp_path / "none.sif"),
        SLURM_ARRAY_TASK_ID="0",
    )
    assert result.returncode == 1
    assert "none.sif: no such image" in result.stderr and "apptainer build" in result.stderr


@pytest.fixture
def fake_apptainer(tmp_path):
    """An `apptainer` on PATH that records its arguments, and an image file for it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "apptainer-calls.txt"
    fake = bin_dir / "apptainer"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{calls}"\n')
    fake.chmod(0o755)
    sif = tmp_path / "metcli.sif"
    sif.write_text("")
    env = {
        "METCLI_RUNNER": "apptainer",
        "METCLI_SIF": str(sif),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return env, calls, sif


def test_a_task_runs_its_steps_through_apptainer_with_the_folders_bound(
    raw_with_five, tmp_path, fake_apptainer
):
    env, calls, sif = fake_apptainer
    raw, out = raw_with_five, tmp_path / "out"
    result = _bash(
        f'bash "$METCLI_SLURM_DIR/participant.sh" "{raw}" "{out}"',
        **env,
        SLURM_ARRAY_TASK_ID="1",
        METCLI_PER_TASK="2",
        CUDA_VISIBLE_DEVICES="0",
        METCLI_SEGMENT_ARGS="--no-tta --device cuda",
    )
    assert result.returncode == 0, result.stderr
    run = f"run --nv --bind {raw}:{raw}:ro,{out} {sif}"
    labels = "--participant-label sub-003 --participant-label sub-004"
    deriv = out / "derivatives"
    assert calls.read_text().splitlines() == [
        f"{run} segment {raw} {deriv}/segment {labels} --no-tta --device cuda --no-progress",
        f"{run} split-lesions {deriv}/segment {deriv}/lesions {labels} --no-progress",
        f"{run} extract {raw} {deriv}/lesions {deriv}/radiomics {labels} --jobs 1 --no-progress",
    ]


def test_the_group_job_runs_the_group_levels_then_trains_and_evaluates(
    raw_with_five, tmp_path, fake_apptainer
):
    env, calls, sif = fake_apptainer
    raw, out, masks = raw_with_five, tmp_path / "out", tmp_path / "masks"
    result = _bash(
        f'bash "$METCLI_SLURM_DIR/group.sh" "{raw}" "{out}"',
        **env,
        METCLI_SEG_DIR=str(masks),
        METCLI_TRAIN_ARGS="--protocol holdout",
        SLURM_CPUS_PER_TASK="4",
    )
    assert result.returncode == 0, result.stderr
    run = f"run --bind {raw}:{raw}:ro,{out},{masks}:{masks}:ro {sif}"
    deriv = out / "derivatives"
    assert calls.read_text().splitlines() == [
        f"{run} split-lesions {masks} {deriv}/lesions --level group --no-progress",
        f"{run} extract {raw} {deriv}/lesions {deriv}/radiomics --level group --no-progress",
        f"{run} train-radiomics {deriv}/radiomics {deriv}/models --labels {raw}/participants.tsv "
        f"--jobs 4 --protocol holdout --no-progress",
        f"{run} evaluate {deriv}/models/oof_predictions.tsv --set train {deriv}/evaluation "
        f"--labels {raw}/participants.tsv --raw {raw} --lesions {deriv}/lesions --no-progress",
    ]
