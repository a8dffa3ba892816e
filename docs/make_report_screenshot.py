"""Make docs/report-screenshot.png: a screenshot of a ``metcli evaluate`` report.

Builds a synthetic example end to end and photographs its report.html in headless
Chromium:

1. ``metcli synth``: 16 small phantoms (10 colorectal, 6 pancreatic) with their true
   masks, and split-lesions' lesion maps of them (``derivatives/truth-lesions``);
2. hand-made lesion-level predictions of two models for 8 held-out test patients (4
   per class), with a class signal, a patient effect and noise: one radiomics-like
   model and one weaker image-like model (no model is trained: the numbers only have
   to look like a study's);
3. ``metcli evaluate`` with ``--compare`` and the lesion overlays (``--raw``,
   ``--lesions``);
4. Chromium renders report.html at 1280 px wide and the full page height; the PNG is
   reduced to 256 colours so that it stays under 1 MB.

With ``--report PATH`` it photographs an existing report instead, such as the one
``make demo`` writes from models it really trained (what docs/report-screenshot.png
shows).

Run from the repository root::

    python docs/make_report_screenshot.py --report demo/derivatives/evaluation/report.html \
        --top 5200
    python docs/make_report_screenshot.py            # the hand-made example instead
    python docs/make_report_screenshot.py --keep /tmp/example   # keep the example data

Needs metcli (installed), Chromium (``chromium`` on the PATH, or ``--chromium``) and
Pillow (a dependency of matplotlib).
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CLASSES = ("colorectal", "pancreatic")
WIDTH = 1280
MAX_BYTES = 1_000_000


def find_chromium(given: str | None) -> str:
    for name in ([given] if given else []) + ["chromium", "chromium-browser", "google-chrome"]:
        path = shutil.which(name)
        if path:
            return path
    sys.exit("no Chromium found: install it (apt-get install chromium) or give --chromium")


def make_example(root: Path, seed: int) -> tuple[Path, Path]:
    """The synthetic cohort and the report of its hand-made predictions."""
    from metcli.evaluation.evaluate import evaluate
    from metcli.io.files import read_tsv
    from metcli.lesions.tables import read_lesion_table
    from metcli.synth.synth import synth_cohort

    synth_cohort(root, n_colorectal=10, n_pancreatic=6, seed=seed)
    participants = read_tsv(root / "rawdata" / "participants.tsv")
    by_class = {
        c: [r["participant_id"] for r in participants if r["primary"] == c] for c in CLASSES
    }
    test = sorted(by_class["colorectal"][:4] + by_class["pancreatic"][:4])
    label = {r["participant_id"]: r["primary"] for r in participants}
    rng = np.random.default_rng(seed)
    lines = {}
    for model, signal, noise in (("knn", 2.2, 0.9), ("densenet", 1.2, 1.1)):
        rows = [
            "participant_id\tlesion_id\tlevel\tmodel\tset\tprob_colorectal\t"
            "prob_pancreatic\tpredicted"
        ]
        for pid in test:
            table = (
                root
                / "derivatives"
                / "truth-lesions"
                / pid
                / "anat"
                / f"{pid}_ce-portal_desc-lesions_dseg.tsv"
            )
            effect = rng.normal(0.0, 0.8)
            sign = 1.0 if label[pid] == "pancreatic" else -1.0
            for lesion in (r for r in read_lesion_table(table) if r["kept"]):
                logit = sign * signal / 2 + effect + rng.normal(0.0, noise)
                p = float(1.0 / (1.0 + np.exp(-logit)))
                rows.append(
                    f"{pid}\t{lesion['index']}\tlesion\t{model}\ttest\t{1 - p:.4f}\t"
                    f"{p:.4f}\t{'pancreatic' if p >= 0.5 else 'colorectal'}"
                )
        lines[model] = rows
    files = []
    for model, rows in lines.items():
        path = root / "predictions" / model / "predictions.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(rows) + "\n")
        path.with_suffix(".json").write_text(
            json.dumps(
                {
                    "positive_class": "pancreatic",
                    "selected": model == "knn",
                    "threshold": 0.5,
                    "threshold_source": "default 0.5 (illustration)",
                }
            )
        )
        files.append(path)
    out = root / "derivatives" / "evaluate"
    evaluate(
        files,
        out,
        labels=root / "rawdata" / "participants.tsv",
        compare=True,
        n_bootstrap=500,
        seed=seed,
        raw=root / "rawdata",
        lesions=root / "derivatives" / "truth-lesions",
        overlay_lesions=3,
        overwrite=True,
    )
    return root, out / "report.html"


def page_height(chromium: str, report: Path, work: Path) -> int:
    """The rendered page's height in CSS pixels at WIDTH (Chromium's --dump-dom)."""
    probe = work / "probe.html"
    script = (
        "<script>window.addEventListener('load', () => document.body.setAttribute("
        "'data-height', String(document.documentElement.scrollHeight)));</script>"
    )
    probe.write_text(
        report.read_text(encoding="utf-8").replace("</body>", script + "</body>"), encoding="utf-8"
    )
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            f"--window-size={WIDTH},1000",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    marker = 'data-height="'
    if marker not in done.stdout:
        sys.exit("Chromium did not render the page:\n" + done.stderr[-2000:])
    start = done.stdout.index(marker) + len(marker)
    return int(html.unescape(done.stdout[start : done.stdout.index('"', start)]))


def screenshot(
    chromium: str, report: Path, target: Path, height: int, keep_height: int | None = None
) -> None:
    from PIL import Image

    raw = target.with_name(target.stem + ".full.png")
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--hide-scrollbars",
            f"--screenshot={raw}",
            f"--window-size={WIDTH},{height}",
            "--virtual-time-budget=5000",
            report.as_uri(),
        ],
        capture_output=True,
        timeout=180,
        check=True,
    )
    image = Image.open(raw).convert("RGB")
    if keep_height is not None and image.height > keep_height:
        image = image.crop((0, 0, image.width, keep_height))
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    raw.unlink()
    size = target.stat().st_size
    if size > MAX_BYTES:
        sys.exit(f"{target} is {size} bytes, over {MAX_BYTES}: reduce the example")
    print(f"{target}: {image.width}x{image.height} px, {size} bytes")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "report-screenshot.png")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="Write the example here and keep it (default: a temporary folder).",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chromium", default=None)
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="Photograph this report.html instead of building the example.",
    )
    parser.add_argument(
        "--top",
        type=int,
        default=None,
        metavar="PX",
        help="Keep only the top PX pixels of the page (a long report).",
    )
    args = parser.parse_args(argv)
    chromium = find_chromium(args.chromium)
    if args.report is not None and not args.report.is_file():
        sys.exit(f"{args.report}: no such report; run make demo first, or leave --report out")
    with tempfile.TemporaryDirectory(prefix="metcli-report-") as temporary:
        if args.report is not None:
            report = args.report.resolve()
        else:
            root = args.keep or Path(temporary) / "example"
            _root, report = make_example(root, args.seed)
        height = page_height(chromium, report, Path(temporary))
        screenshot(chromium, report, args.out, height, args.top)


if __name__ == "__main__":
    main()
