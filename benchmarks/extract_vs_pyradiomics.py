"""metcli extract against pyradiomics' own batch command line, on one synthetic cohort.

Builds a cohort of CTs with many lesions each (paper size: about 20 lesions per
participant), splits the lesions with metcli split-lesions, then runs

* ``metcli extract RAW LESIONS OUT --params P -j N`` (reads each CT once, crops
  each lesion, lesions in parallel), and
* ``pyradiomics cases.csv -p P -j N -f csv`` (one row per lesion: the CT, the
  lesion map and the lesion's label; pyradiomics reads the whole CT and map for
  every lesion),

with the same parameter file and the same number of processes, and prints the
wall and CPU time of each (CPU time, of the command and its worker processes,
is less sensitive to other work on the machine), the throughput ratios and the
largest relative difference
between the two sets of feature values (they must be identical: metcli runs
pyradiomics on each lesion).

The parameters are the ``study`` preset without shape2D (pyradiomics' batch
mode cannot compute 2D shape on the largest slice of a 3D lesion).

    python benchmarks/extract_vs_pyradiomics.py --jobs 2
    python benchmarks/extract_vs_pyradiomics.py --participants 2 --lesions 50 --slices 600

Everything is written to a temporary folder (``--workdir`` to keep it).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PARAMS = """\
# the study preset without shape2D: what pyradiomics' batch mode can also compute
setting:
  binWidth: 25
imageType:
  Original: {}
featureClass:
  shape:
  firstorder:
  glcm:
  glrlm:
  glszm:
  gldm:
  ngtdm:
"""


def make_cohort(root: Path, participants: int, lesions: int, slices: int, seed: int) -> None:
    """raw/ CTs (512 x 512 x slices, 0.78 x 0.78 x 1.5 mm), seg/ dseg with a liver and lesions."""
    import SimpleITK as sitk
    from scipy import ndimage

    from metcli.io.bids import Entities
    from metcli.io.participants import write_participants

    rng = np.random.default_rng(seed)
    spacing = (0.78125, 0.78125, 1.5)
    shape = (slices, 512, 512)
    write_participants(
        root / "raw",
        [{"participant_id": f"sub-{i:03d}", "primary": "crc"} for i in range(1, participants + 1)],
    )
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for number in range(1, participants + 1):
        sub = f"{number:03d}"
        noise = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), 1.0)
        ct = np.full(shape, -1000, np.float32)
        body = ((y - 256) / 230.0) ** 2 + ((x - 256) / 250.0) ** 2 <= 1
        ct[:, body[0]] = 40
        liver = (
            ((z - shape[0] / 2) / (shape[0] * 0.45)) ** 2
            + ((y - 230) / 130.0) ** 2
            + ((x - 190) / 120.0) ** 2
        ) <= 1
        dseg = np.zeros(shape, np.uint8)
        dseg[liver] = 1
        ct[liver] = 100
        placed = 0
        centres = []
        attempts = 0
        while placed < lesions and attempts < 10000:
            attempts += 1
            radius = float(rng.uniform(3.0, 14.0))  # mm
            centre = np.array(
                [rng.uniform(0, shape[0]), rng.uniform(110, 350), rng.uniform(80, 300)]
            )
            phys = centre * np.array(spacing[::-1])
            if any(np.linalg.norm(phys - c) < radius + r + 3 for c, r in centres):
                continue
            zi, yi, xi = (int(v) for v in centre)
            if not (0 <= zi < shape[0] and liver[min(zi, shape[0] - 1), yi, xi]):
                continue
            box = tuple(
                slice(max(0, int(c - radius / s) - 1), min(n, int(c + radius / s) + 2))
                for c, s, n in zip(centre, spacing[::-1], shape)
            )
            zz, yy, xx = np.ogrid[box]
            ball = (
                ((zz - centre[0]) * spacing[2]) ** 2
                + ((yy - centre[1]) * spacing[1]) ** 2
                + ((xx - centre[2]) * spacing[0]) ** 2
            ) <= radius**2
            ball &= liver[box]
            dseg[box][ball] = 2
            ct[box][ball] = float(rng.uniform(-10, 140))
            centres.append((phys, radius))
            placed += 1
        ct += noise * 60.0
        for folder, array, suffix in (("raw", ct.astype(np.int16), "ct"), ("seg", dseg, "dseg")):
            path = root / folder / Entities(sub=sub, ce="portal", suffix=suffix).relpath()
            path.parent.mkdir(parents=True, exist_ok=True)
            image = sitk.GetImageFromArray(array)
            image.SetSpacing(spacing)
            image.SetOrigin((-200.0, -180.0, -900.0))
            sitk.WriteImage(image, str(path), useCompression=True)
        print(f"  sub-{sub}: {placed} lesions", file=sys.stderr)


def console_script(name: str) -> str:
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(command: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and the processes it waited for)."""
    cpu = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return elapsed, _children_cpu() - cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=3)
    parser.add_argument("--lesions", type=int, default=20, help="lesions per participant")
    parser.add_argument("--slices", type=int, default=120, help="slices per CT (1.5 mm)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep everything here")
    args = parser.parse_args(argv)

    from metcli.io.bids import Entities, find_files
    from metcli.io.files import read_tsv
    from metcli.lesions.split_lesions import split_lesions

    root = args.workdir or Path(tempfile.mkdtemp(prefix="metcli-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        print(
            f"cohort: {args.participants} participants x {args.lesions} lesions, "
            f"512x512x{args.slices} CTs, in {root}",
            file=sys.stderr,
        )
        make_cohort(root, args.participants, args.lesions, args.slices, args.seed)
        split_lesions(root / "seg", root / "lesions", min_diameter_mm=0)
        params = root / "params.yaml"
        params.write_text(PARAMS)

        cases = root / "cases.csv"
        keys = []
        with open(cases, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["Image", "Mask", "Label"])
            for lesion_map in find_files(root / "lesions", suffix="dseg", desc="lesions"):
                ent = lesion_map.entities
                ct = root / "raw" / Entities(sub=ent.sub, ce=ent.ce).relpath()
                table = lesion_map.path.with_name(lesion_map.path.name[:-7] + ".tsv")
                for row in read_tsv(table):
                    if row["kept"] == "true":
                        writer.writerow([ct, lesion_map.path, row["index"]])
                        keys.append((f"sub-{ent.sub}", int(row["index"])))
        n_lesions = len(keys)

        metcli_time, metcli_cpu = run(
            [
                console_script("metcli"),
                "extract",
                str(root / "raw"),
                str(root / "lesions"),
                str(root / "out"),
                "--params",
                str(params),
                "--jobs",
                str(args.jobs),
                "-q",
            ]
        )
        pyradiomics_csv = root / "pyradiomics.csv"
        pyradiomics_time, pyradiomics_cpu = run(
            [
                console_script("pyradiomics"),
                str(cases),
                "-p",
                str(params),
                "-j",
                str(args.jobs),
                "-o",
                str(pyradiomics_csv),
                "-f",
                "csv",
            ]
        )

        ours = {
            (r["participant_id"], int(r["lesion_id"])): r
            for r in read_tsv(root / "out" / "features.tsv")
        }
        with open(pyradiomics_csv, newline="") as handle:
            theirs = list(csv.DictReader(handle))
        worst, compared = 0.0, 0
        for row in theirs:
            sub = "sub-" + Path(row["Image"]).name.split("_")[0][4:]
            mine = ours[(sub, int(float(row["Label"])))]
            for name, value in row.items():
                if not name.startswith("original_"):
                    continue
                a, b = float(mine[name]), float(value)
                difference = abs(a - b) / abs(b) if b else abs(a)
                worst = max(worst, difference if math.isfinite(difference) else math.inf)
                compared += 1
        print(f"lesions: {n_lesions} ({len(theirs)} pyradiomics rows, {len(ours)} metcli rows)")
        print(f"feature values compared: {compared}, max relative difference: {worst:.3g}")
        print(
            f"metcli extract -j {args.jobs}:   {metcli_time:8.2f} s wall, {metcli_cpu:8.2f} s CPU "
            f"({n_lesions / metcli_time:.2f} lesions/s)"
        )
        print(
            f"pyradiomics batch -j {args.jobs}: {pyradiomics_time:8.2f} s wall, "
            f"{pyradiomics_cpu:8.2f} s CPU ({n_lesions / pyradiomics_time:.2f} lesions/s)"
        )
        print(
            f"throughput ratio (metcli / pyradiomics): {pyradiomics_time / metcli_time:.2f}x "
            f"wall, {pyradiomics_cpu / metcli_cpu:.2f}x CPU"
        )
        print(
            f"cpu cores: {os.cpu_count()}, load average (1 min) at the end: "
            f"{os.getloadavg()[0]:.1f} (other work on the machine slows both runs)"
        )
        return 0 if worst < 1e-9 and len(theirs) == n_lesions == len(ours) else 1
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
