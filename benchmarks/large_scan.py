"""Large scans: time and peak memory of segment (both backends), split-lesions and extract.

Builds, once, a 512 x 512 x 600 CT (int16 HU) with a liver and 50 lesions with
metcli's own phantom code (``metcli.synth``: :func:`~metcli.synth.synth.synth_cohort`
on a larger :class:`~metcli.synth.phantom.Grid`), in metcli's raw layout with its
true segmentation. The field of view is the one of the ``small`` synth phantoms
the demo model was trained on (a half-size abdomen, 192 x 192 x 120 mm), sampled
finely (0.375 x 0.375 x 0.2 mm at 512 x 512 x 600), so that the demo model finds
the liver and the lesions: on a wider or longer field of view it finds livers
where there are none. Then it runs, each as its own ``metcli`` process:

* ``segment-nnunet``: ``metcli segment --backend nnunet`` (the demo model);
* ``segment-onnx``: ``metcli segment --backend onnx`` (the demo model exported
  with ``metcli export-onnx``);
* ``split-lesions``: on the ONNX backend's segmentation;
* ``extract``: on those lesions (``--jobs``, default 2).

For each step it measures the wall time and the peak resident memory: the peak of
the step's process tree (its processes' resident memory added up, read from
``/proc`` every 0.1 s) and the main process's own peak (``ru_maxrss`` of that
child from ``os.wait4``); the larger is reported. It prints a table (step,
seconds, peak GB, goal, pass/fail), the ONNX / nnU-Net time ratio, and the
agreement of each segmentation with the truth.

    python benchmarks/large_scan.py                       # 512x512x600, all steps
    python benchmarks/large_scan.py --size 256x256x300    # a quick run
    python benchmarks/large_scan.py --steps segment-onnx,split-lesions --workdir /tmp/ls
    python benchmarks/large_scan.py --workdir /tmp/after --reference /tmp/before

``--workdir`` keeps the scan (and the ONNX export) for the next run; without it
everything goes to a temporary folder, removed at the end unless ``--keep``.
``--reference`` compares every output (images voxel by voxel, tables as text)
with those of an earlier run's workdir, for example one made before a change
(run the script once with ``PYTHONPATH`` pointing at the older metcli).
GB are 10^9 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

STEPS = ("segment-nnunet", "segment-onnx", "split-lesions", "extract")
#: The field of view (mm, x y z) of the demo model's training phantoms (synth ``small``).
FIELD_OF_VIEW_MM = (192.0, 192.0, 120.0)
ANATOMY_SCALE = 0.5
#: Lesion sizes (mm) that let 50 lesions fit the half-size liver, apart.
LESION_KNOBS = {"diameter_colorectal": 8.0, "diameter_min": 6.0, "diameter_max": 14.0}
PARTICIPANT = "001"


# ----------------------------------------------------------------------------- the scan
def grid_of(size: tuple[int, int, int], spacing: tuple[float, float, float] | None = None):
    """The phantom's grid: ``size`` voxels over the demo model's field of view, or of
    ``spacing`` mm (the same half-size anatomy in a larger field)."""
    from metcli.synth.phantom import Grid

    if spacing is None:
        spacing = tuple(f / n for f, n in zip(FIELD_OF_VIEW_MM, size))
    return Grid(shape=size, spacing=tuple(spacing), anatomy_scale=ANATOMY_SCALE)


def planned_count(seed: int, params) -> int:
    """How many lesions participant 0 of ``seed`` is drawn, as ``metcli.synth`` draws them
    (its lesion stream: a patient offset, then 1 + Poisson(mean - 1), at most
    ``max_lesions``). Only a shortcut: :func:`build` counts the lesions placed."""
    participant = np.random.SeedSequence(entropy=seed, spawn_key=(0,))
    phantom_seed, _demographics = participant.spawn(2)
    _anatomy, lesions, _texture, _noise = np.random.default_rng(phantom_seed).spawn(4)
    lesions.normal(0.0, params.patient_sd)
    count = 1 + int(lesions.poisson(params.lesions_colorectal - 1.0))
    return min(count, int(params.max_lesions))


def build(folder: Path, size, lesions: int, first_seed: int, spacing=None) -> dict:
    """The cohort of one participant with exactly ``lesions`` placed lesions (cached)."""
    from metcli.io.files import read_tsv
    from metcli.synth.phantom import SynthParams
    from metcli.synth.synth import synth_cohort

    marker = folder / "large_scan.json"
    if marker.is_file():
        info = json.loads(marker.read_text())
        grid = grid_of(size, spacing)
        if info.get("size") == list(size) and info.get("lesions") == lesions:
            if np.allclose(info["spacing"], grid.spacing):
                return info
    knobs = dict(LESION_KNOBS, lesions_colorectal=float(lesions), max_lesions=lesions)
    params = SynthParams(grid=grid_of(size, spacing), **knobs)
    for seed in range(first_seed, first_seed + 200):
        if planned_count(seed, params) != lesions:
            continue
        started = time.perf_counter()
        synth_cohort(
            folder,
            n_colorectal=1,
            n_pancreatic=0,
            seed=seed,
            size=params.grid,
            truth_lesions=False,
            overwrite=True,
            **knobs,
        )
        table = folder / "derivatives" / "truth" / "lesions.tsv"
        placed = len(read_tsv(table))
        print(f"seed {seed}: {placed} lesions placed ({time.perf_counter() - started:.0f} s)")
        if placed == lesions:
            info = {"size": list(size), "lesions": lesions, "seed": seed}
            info["spacing"] = list(params.grid.spacing)
            marker.write_text(json.dumps(info))
            return info
    sys.exit(f"no seed from {first_seed} placed {lesions} lesions")


# ----------------------------------------------------------------------------- measuring
def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and its descendants, from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as handle:
                parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/statm", encoding="ascii") as handle:
                rss[int(entry)] = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(rss.get(pid, 0) for pid in tree)


def run_step(name: str, command: list[str], log_dir: Path) -> dict:
    """Run one step; its wall time, peak memory (bytes) and exit code."""
    log = open(log_dir / f"{name}.log", "w", encoding="utf-8")
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    peak = [0]
    done = threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss(process.pid))
            done.wait(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    _pid, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    done.set()
    poller.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    log.close()
    own = usage.ru_maxrss * 1024  # KiB on Linux
    return {
        "step": name,
        "seconds": wall,
        "peak": max(peak[0], own),
        "peak_tree": peak[0],
        "peak_main": own,
        "rc": process.returncode,
        "log": str(log_dir / f"{name}.log"),
    }


# ----------------------------------------------------------------------------- checks
def dice_report(seg: Path, truth: Path) -> str:
    import SimpleITK as sitk
    from scipy import ndimage

    a = sitk.GetArrayFromImage(sitk.ReadImage(str(seg)))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(truth)))

    def dice(x, y):
        total = int(x.sum()) + int(y.sum())
        return 1.0 if total == 0 else 2.0 * int(np.logical_and(x, y).sum()) / total

    liver, lesion = dice(a > 0, b > 0), dice(a == 2, b == 2)
    true_lesions, count = ndimage.label(b == 2, structure=np.ones((3, 3, 3), bool))
    found = np.unique(true_lesions[a == 2])
    return (
        f"liver Dice {liver:.3f}, lesion Dice {lesion:.3f}, "
        f"true lesions touched {int(np.count_nonzero(found))}/{count}"
    )


def compare_outputs(work: Path, reference: Path) -> None:
    """Whether this run's outputs equal those of an earlier run (``--reference``)."""
    import SimpleITK as sitk

    for folder in ("seg-nnunet", "seg-onnx", "lesions", "features"):
        mine = sorted(p for p in (work / folder).rglob("*") if p.name.endswith((".nii.gz", ".tsv")))
        for path in mine:
            other = reference / path.relative_to(work)
            if not other.is_file():
                print(f"  {path.relative_to(work)}: not in the reference")
            elif path.suffix == ".tsv":
                same = path.read_text() == other.read_text()
                print(f"  {path.relative_to(work)}: {'identical' if same else 'DIFFERS'}")
            else:
                a = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
                b = sitk.GetArrayFromImage(sitk.ReadImage(str(other)))
                differ = int(np.count_nonzero(a != b)) if a.shape == b.shape else a.size
                state = "identical voxels" if differ == 0 else f"{differ} voxels DIFFER"
                print(f"  {path.relative_to(work)}: {state}")


def machine() -> str:
    model, cores = platform.processor() or platform.machine(), os.cpu_count()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    with open("/proc/meminfo", encoding="ascii") as handle:
        total = int(handle.readline().split()[1]) / 2**20
    return (
        f"{model}, {cores} logical CPUs, {total:.1f} GiB RAM, Python {platform.python_version()}, "
        f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}"
    )


# ----------------------------------------------------------------------------- main
def commands(
    work: Path, onnx_dir: Path, jobs: int, tta: bool, device: str = "auto"
) -> dict[str, list[str]]:
    metcli = str(Path(sys.executable).with_name("metcli"))
    raw = work / "scan" / "rawdata"
    common = ["--overwrite", "--no-progress"]
    seg_onnx = work / "seg-onnx"
    segment = [metcli, "segment", "--device", device] + ([] if tta else ["--no-tta"])
    return {
        "segment-nnunet": [*segment, str(raw), str(work / "seg-nnunet"), *common],
        "segment-onnx": [
            *segment,
            str(raw),
            str(seg_onnx),
            "--backend",
            "onnx",
            "--model",
            str(onnx_dir),
            *common,
        ],
        "split-lesions": [metcli, "split-lesions", str(seg_onnx), str(work / "lesions"), *common],
        "extract": [
            metcli,
            "extract",
            str(raw),
            str(work / "lesions"),
            str(work / "features"),
            "--jobs",
            str(jobs),
            *common,
        ],
    }


def parse_spacing(text: str) -> tuple[float, float, float]:
    parts = tuple(float(p) for p in text.split(","))
    if len(parts) != 3 or min(parts) <= 0:
        raise argparse.ArgumentTypeError("give X,Y,Z in mm, e.g. 0.78125,0.78125,1.5")
    return parts  # type: ignore[return-value]


def parse_size(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 3 or min(parts) < 16:
        raise argparse.ArgumentTypeError("give X x Y x Z voxels, e.g. 512x512x600")
    return parts  # type: ignore[return-value]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=(512, 512, 600), help="X x Y x Z")
    parser.add_argument(
        "--spacing",
        type=parse_spacing,
        default=None,
        help="voxel size in mm, X,Y,Z (default: the demo model's field of view / --size; "
        "a larger field, e.g. 0.78125,0.78125,1.5, shows the memory of a clinical grid, "
        "but the demo model finds livers where there are none there)",
    )
    parser.add_argument("--no-tta", action="store_true", help="segment --no-tta")
    parser.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="segment --device"
    )
    parser.add_argument("--lesions", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="first seed tried")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"of {', '.join(STEPS)}")
    parser.add_argument("--jobs", type=int, default=2, help="extract --jobs")
    parser.add_argument("--goal-gb", type=float, default=4.0)
    parser.add_argument("--workdir", type=Path, default=None, help="kept; reuses its scan")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--reference", type=Path, default=None, help="compare the outputs with this workdir's"
    )
    parser.add_argument("--build", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build is not None:
        print(json.dumps(build(args.build, args.size, args.lesions, args.seed, args.spacing)))
        return 0
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        parser.error(f"unknown steps {unknown}; choose from {', '.join(STEPS)}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="metcli-large-scan-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(args, steps, work)
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif args.workdir is None:
            print(f"kept {work}")


def _run(args, steps: list[str], work: Path) -> int:
    from metcli.io.weights import resolve_model

    size = "x".join(map(str, args.size))
    print(f"machine: {machine()}")
    started = time.perf_counter()
    # the scan is built in its own process, so that this one stays small
    built = subprocess.run(
        [sys.executable, __file__, "--build", str(work / "scan"), "--size", size]
        + (["--spacing", ",".join(map(str, args.spacing))] if args.spacing else [])
        + ["--lesions", str(args.lesions), "--seed", str(args.seed)],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        sys.exit(f"building the scan failed:\n{built.stderr[-3000:]}")
    info = json.loads(built.stdout.strip().splitlines()[-1])
    spacing = " x ".join(f"{s:g}" for s in info["spacing"])
    print(
        f"scan: {size} voxels at {spacing} mm, {info['lesions']} lesions (seed {info['seed']}); "
        f"ready in {time.perf_counter() - started:.0f} s"
    )
    onnx_dir = work / "onnx"
    if "segment-onnx" in steps and not (onnx_dir / "model.onnx").is_file():
        model = resolve_model("metcli-demo-nnunet")
        metcli = str(Path(sys.executable).with_name("metcli"))
        subprocess.run(
            [metcli, "export-onnx", str(model), str(onnx_dir)], check=True, capture_output=True
        )
    log_dir = work / "logs"
    log_dir.mkdir(exist_ok=True)
    results = []
    every = commands(work, onnx_dir, args.jobs, tta=not args.no_tta, device=args.device)
    for name in steps:
        result = run_step(name, every[name], log_dir)
        results.append(result)
        print(
            f"  {name}: {result['seconds']:.1f} s, peak {result['peak'] / 1e9:.2f} GB "
            f"(tree {result['peak_tree'] / 1e9:.2f}, main {result['peak_main'] / 1e9:.2f}), "
            f"exit {result['rc']}",
            flush=True,
        )
    print()
    print("step\tseconds\tpeak_GB\tgoal_GB\tresult")
    for r in results:
        ok = r["rc"] == 0 and r["peak"] / 1e9 < args.goal_gb
        state = "pass" if ok else ("fail" if r["rc"] == 0 else f"error (exit {r['rc']})")
        print(f"{r['step']}\t{r['seconds']:.1f}\t{r['peak'] / 1e9:.2f}\t{args.goal_gb:g}\t{state}")
    by_step = {r["step"]: r for r in results}
    if "segment-nnunet" in by_step and "segment-onnx" in by_step:
        ratio = by_step["segment-onnx"]["seconds"] / by_step["segment-nnunet"]["seconds"]
        print(f"time ONNX / nnU-Net: {ratio:.2f}")
    _report_quality(work, by_step)
    if args.reference is not None:
        print(f"outputs against {args.reference}:")
        compare_outputs(work, args.reference)
    print(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    return 0 if all(r["rc"] == 0 for r in results) else 1


def _report_quality(work: Path, by_step: dict) -> None:
    truth = next((work / "scan" / "derivatives" / "truth").rglob("*_dseg.nii.gz"), None)
    for step, folder in (("segment-nnunet", "seg-nnunet"), ("segment-onnx", "seg-onnx")):
        seg = next((work / folder).rglob("*_dseg.nii.gz"), None)
        if step in by_step and by_step[step]["rc"] == 0 and seg and truth:
            print(f"{step} against the truth: {dice_report(seg, truth)}")
    if "split-lesions" in by_step and by_step["split-lesions"]["rc"] == 0:
        table = next((work / "lesions").rglob("*_desc-lesions_dseg.tsv"), None)
        if table is not None:
            from metcli.io.files import read_tsv

            rows = read_tsv(table)
            kept = sum(1 for row in rows if row["kept"] == "true")
            print(f"split-lesions: {len(rows)} components, {kept} kept")


if __name__ == "__main__":
    sys.exit(main())
