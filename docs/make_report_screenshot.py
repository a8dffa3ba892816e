"""Make docs/report-screenshot.png: a screenshot of a ``metcli evaluate`` report.

Builds a synthetic example end to end and photographs its report.html in headless
Chromium:

1. ``metcli synth``: 16 small phantoms (10 colorectal, 6 pancreatic) with their true
   masks, and split-lesions' lesion maps of them (``derivatives/truth-lesions``);
2. hand-made lesion-level predictions of two models for 8 held-out test patients (4
   per class), with a class signal, a patient effect and noise: one radiomics-like
   model and one weaker image-like model (no model is trained: the numbers only have
   to look like a study's);
3. a hand-made reader study of the same test patients (two readers, each without and
   with the model: ``--readers``), so that the report shows the readers' points on the
   ROC figure and their McNemar tests; Table 1 comes from participants.tsv (age, sex);
4. ``metcli evaluate`` with ``--compare``, the readers and the lesion overlays
   (``--raw``, ``--lesions``);
5. Chromium renders report.html at 1280 px wide and the full page height; the PNG is
   reduced to 256 colours so that it stays under 1 MB.

With ``--multiclass`` it builds a three-class example instead and writes
docs/report-screenshot-multiclass.png: ``metcli synth --scenario almss`` with 7
patients of each of hcc, icc and colorectal; hand-made lesion-level predictions of
one model for 12 test patients (4 per class) and for the other 9 (validation); the
per-class cut-offs chosen by best F1 on the validation predictions
(``metcli.io.cutoffs.best_f1_cutoffs``) make the ``predicted`` column and are
recorded in the predictions' sidecar as ``decision``, as ``metcli predict`` records a
card's cut-offs (so evaluate's cut-offs section reads them there; ``--cutoffs FILE``
is the other route); two readers without and with the model calling one of the three
classes; Table 1 (age, sex). The top 5600 px show Table 1, the metrics, the cut-offs
with the figures by argmax and by the cut-offs, the readers and the patient-level ROC
figure (one-vs-rest curves, the readers' points in their class's colour).

With ``--report PATH`` it photographs an existing report instead, such as the one
``make demo`` writes from models it really trained (what docs/report-screenshot.png
shows before readers and Table 1 were added).

Run from the repository root::

    python docs/make_report_screenshot.py --top 5500   # the hand-made example (the PNG)
    python docs/make_report_screenshot.py --multiclass --top 5600   # the three-class PNG
    python docs/make_report_screenshot.py --report demo/derivatives/evaluation/report.html \
        --top 5200
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
MULTICLASS = ("hcc", "icc", "colorectal")  # --multiclass
#: --multiclass: (model, signal, noise) of the hand-made predictions; one model keeps
#: the ROC figure (three one-vs-rest curves and the readers' points) readable.
MULTICLASS_MODELS = (("radiomics", 1.4, 1.0),)
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
    readers = write_readers(root / "readers" / "readers.tsv", test, label)
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
        readers=readers,
        overwrite=True,
    )
    return root, out / "report.html"


def make_multiclass_example(root: Path, seed: int) -> tuple[Path, Path]:
    """A three-class almss cohort and the report of its hand-made predictions, decided by
    per-class cut-offs chosen by best F1 on hand-made validation predictions."""
    from metcli.evaluation.evaluate import evaluate
    from metcli.io.cutoffs import best_f1_cutoffs, decide, decision_record
    from metcli.io.files import read_tsv
    from metcli.synth.almss_cohort import synth_almss_cohort

    synth_almss_cohort(root, class_counts={c: 7 for c in MULTICLASS}, seed=seed)
    participants = read_tsv(root / "rawdata" / "participants.tsv")
    label = {r["participant_id"]: r["primary"] for r in participants}
    by_class = {c: sorted(p for p in label if label[p] == c) for c in MULTICLASS}
    test = sorted(p for c in MULTICLASS for p in by_class[c][:4])
    validation = sorted(p for c in MULTICLASS for p in by_class[c][4:])
    rng = np.random.default_rng(seed)
    header = "\t".join(
        ["participant_id", "lesion_id", "level", "model", "set"]
        + [f"prob_{c}" for c in MULTICLASS]
        + ["predicted"]
    )
    files = []
    for model, signal, noise in MULTICLASS_MODELS:
        _keys, val_labels, val_probs = lesion_probs(root, validation, label, rng, signal, noise)
        cutoffs = best_f1_cutoffs(val_labels, val_probs, MULTICLASS)
        keys, _labels, probs = lesion_probs(root, test, label, rng, signal, noise)
        rows = [header] + [
            "\t".join([pid, str(lesion), "lesion", model, "test"] + [f"{p:.4f}" for p in row])
            + f"\t{called}"
            for (pid, lesion), row, called in zip(keys, probs, decide(probs, MULTICLASS, cutoffs))
        ]
        path = root / "predictions" / model / "predictions.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(rows) + "\n")
        chosen_on = (
            f"hand-made validation predictions, {len(val_labels)} lesions of "
            f"{len(validation)} patients"
        )
        decision = decision_record("best-f1", cutoffs, chosen_on=chosen_on, level="lesion")
        path.with_suffix(".json").write_text(
            json.dumps(
                {"classes": list(MULTICLASS), "selected": True, "decision": decision},
                indent=2,
            )
        )
        files.append(path)
    wrong = {  # (reader, assisted): (hcc, icc, colorectal patients called wrong)
        ("R1", "no"): (1, 2, 1),
        ("R1", "yes"): (0, 1, 1),
        ("R2", "no"): (1, 2, 2),
        ("R2", "yes"): (1, 1, 0),
    }
    readers = write_readers(
        root / "readers" / "readers.tsv", test, label, wrong=wrong, classes=MULTICLASS
    )
    out = root / "derivatives" / "evaluate"
    evaluate(
        files,
        out,
        labels=root / "rawdata" / "participants.tsv",
        compare=len(files) > 1,
        n_bootstrap=500,
        seed=seed,
        readers=readers,
        table1_columns=["age", "sex"],
        overwrite=True,
    )
    return root, out / "report.html"


def lesion_probs(root: Path, patients, label, rng, signal: float, noise: float):
    """Hand-made probabilities of the kept lesions of ``patients``: the softmax of logits
    with the true class raised by ``signal``, a patient effect shared by the patient's
    lesions and noise. Returns ((patient, lesion) keys, true classes, probabilities)."""
    from metcli.lesions.tables import read_lesion_table

    keys, labels, blocks = [], [], []
    for pid in patients:
        table = (
            root
            / "derivatives"
            / "truth-lesions"
            / pid
            / "anat"
            / f"{pid}_ce-portal_desc-lesions_dseg.tsv"
        )
        lesions = [r["index"] for r in read_lesion_table(table) if r["kept"]]
        logits = rng.normal(0.0, 0.7, size=len(MULTICLASS)) + rng.normal(
            0.0, noise, size=(len(lesions), len(MULTICLASS))
        )
        logits[:, MULTICLASS.index(label[pid])] += signal
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        blocks.append(exp / exp.sum(axis=1, keepdims=True))
        keys += [(pid, lesion) for lesion in lesions]
        labels += [label[pid]] * len(lesions)
    return keys, labels, np.concatenate(blocks)


def write_readers(path: Path, patients, label, wrong=None, classes=CLASSES) -> Path:
    """Two readers' calls on the test patients, without and with the model (hand-made):
    each reading is wrong on the first ``k`` patients of each class, calling them the
    next class of ``classes`` (the other one of two)."""
    wrong = wrong or {  # (reader, assisted): (patients of each class called wrong)
        ("R1", "no"): (1, 1),
        ("R1", "yes"): (1, 0),
        ("R2", "no"): (1, 2),
        ("R2", "yes"): (0, 1),
    }
    lines = ["participant_id\treader\tcall\tassisted"]
    for (reader, assisted), counts in wrong.items():
        for index, (cls, k) in enumerate(zip(classes, counts)):
            members = [p for p in patients if label[p] == cls]
            for number, pid in enumerate(members):
                call = classes[(index + 1) % len(classes)] if number < k else cls
                lines.append(f"{pid}\t{reader}\t{call}\t{assisted}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


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
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="The PNG (default: docs/report-screenshot.png, with --multiclass "
        "docs/report-screenshot-multiclass.png).",
    )
    parser.add_argument(
        "--multiclass",
        action="store_true",
        help="The three-class example (hcc, icc, colorectal) with per-class cut-offs.",
    )
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
            build = make_multiclass_example if args.multiclass else make_example
            _root, report = build(root, args.seed)
        height = page_height(chromium, report, Path(temporary))
        out = args.out or HERE / (
            "report-screenshot-multiclass.png" if args.multiclass else "report-screenshot.png"
        )
        screenshot(chromium, report, out, height, args.top)


if __name__ == "__main__":
    main()
