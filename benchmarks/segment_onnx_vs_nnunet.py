"""metcli's ONNX backend against nnU-Net's own predictor: same model, same scans, one run.

Exports the nnU-Net model to ONNX (``metcli export-onnx``), writes the scans
(``metcli synth`` phantoms unless ``--ct`` names files), then segments every scan
once with each backend, each scan in a fresh subprocess so that its peak resident
memory (``VmHWM`` on Linux) belongs to that scan and backend alone:

* ``nnunet``: ``nnUNetPredictor`` (nnunetv2) on torch, ``predict_single_npy_array``;
* ``onnx``: :class:`metcli.segmentation.onnx.OnnxSegmenter` on ONNX Runtime (no torch).

It prints, per scan and backend, the wall time of the whole subprocess (imports,
model loading, prediction), the prediction time alone and the peak memory, then the
ratios nnU-Net / ONNX, and the per-label Dice between the two outputs.

    python benchmarks/segment_onnx_vs_nnunet.py                       # the demo model
    python benchmarks/segment_onnx_vs_nnunet.py --model PATH --scans 3 --tta
    python benchmarks/segment_onnx_vs_nnunet.py --device cuda --size paper

Everything is written to a temporary folder (``--workdir`` to keep it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


# ----------------------------------------------------------------------------- child
def _peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    Linux: VmHWM of /proc/self/status, which starts afresh at exec (ru_maxrss does
    not: it keeps the parent's peak from before the fork, here a parent with torch).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def child(
    backend: str,
    model: str,
    ct_path: str,
    out_path: str,
    tta: bool,
    device: str,
    step: float,
    fold: str,
) -> None:
    """Segment one scan with one backend; print one JSON line with the timings."""
    start = time.perf_counter()
    import SimpleITK as sitk

    ct = sitk.ReadImage(ct_path)
    if backend == "onnx":
        from metcli.segmentation.onnx import OnnxSegmenter

        segmenter = OnnxSegmenter(model, device=device, tta=tta, step_size=step)
        loaded = time.perf_counter()
        labels = segmenter.predict(ct)
        provider = segmenter.provider
    else:
        with _stdout_to_stderr():
            import torch
            from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

            torch.set_num_threads(os.cpu_count() or 1)
            use_cuda = device in ("cuda", "auto") and torch.cuda.is_available()
            predictor = nnUNetPredictor(
                tile_step_size=step,
                use_gaussian=True,
                use_mirroring=tta,
                perform_everything_on_device=use_cuda,
                device=torch.device("cuda" if use_cuda else "cpu"),
                verbose=False,
                allow_tqdm=False,
            )
            predictor.initialize_from_trained_model_folder(
                model, use_folds=(int(fold) if fold != "all" else "all",)
            )
            loaded = time.perf_counter()
            array = sitk.GetArrayFromImage(ct).astype(np.float32)[None]
            seg = predictor.predict_single_npy_array(
                array, {"spacing": [abs(s) for s in ct.GetSpacing()[::-1]]}, None, None, False
            )
        labels = sitk.GetImageFromArray(np.asarray(seg).astype(np.uint8))
        labels.CopyInformation(ct)
        provider = "cuda" if use_cuda else "cpu"
    done = time.perf_counter()
    sitk.WriteImage(labels, out_path)
    print(
        json.dumps(
            {
                "load_s": loaded - start,
                "predict_s": done - loaded,
                "peak_rss_mb": _peak_rss_mb(),
                "device": provider,
            }
        )
    )


class _stdout_to_stderr:
    """nnU-Net prints progress on stdout; the child's stdout carries one JSON line."""

    def __enter__(self):
        self._saved = sys.stdout
        sys.stdout = sys.stderr

    def __exit__(self, *exc):
        sys.stdout = self._saved


# ----------------------------------------------------------------------------- parent
def make_scans(folder: Path, count: int, seed: int, size: str) -> list[Path]:
    import SimpleITK as sitk

    from metcli.synth.phantom import SynthParams, grid_for, make_phantom

    params = SynthParams(grid=grid_for(size)) if size != "small" else None
    paths = []
    for index in range(count):
        ct, _dseg, _lesions = make_phantom(np.random.default_rng([seed, index]), params)
        path = folder / f"scan{index:02d}_ct.nii.gz"
        sitk.WriteImage(ct, str(path))
        paths.append(path)
    return paths


def run_child(args, backend: str, model: Path, ct: Path, out: Path) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        backend,
        str(model),
        str(ct),
        str(out),
        "--device",
        args.device,
        "--step-size",
        str(args.step_size),
        "--fold",
        args.fold,
    ]
    if args.tta:
        command.append("--tta")
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{backend} failed on {ct.name}:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def dice_per_label(a_path: Path, b_path: Path) -> dict[int, float]:
    import SimpleITK as sitk

    a = sitk.GetArrayFromImage(sitk.ReadImage(str(a_path)))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(b_path)))
    out = {}
    for value in sorted(set(np.unique(a)) | set(np.unique(b))):
        x, y = a == value, b == value
        total = x.sum() + y.sum()
        out[int(value)] = 1.0 if total == 0 else float(2 * np.logical_and(x, y).sum() / total)
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [
                line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")
            ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs{gpu}, Python {platform.python_version()}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="metcli-demo-nnunet",
        help="nnU-Net v2 model folder or manifest name (default: the demo model)",
    )
    parser.add_argument("--fold", default="0")
    parser.add_argument(
        "--ct",
        nargs="*",
        type=Path,
        default=None,
        help="CT files to segment (default: synthetic phantoms)",
    )
    parser.add_argument("--scans", type=int, default=3, help="number of synthetic phantoms")
    parser.add_argument("--size", default="small", help="synth size preset (small, paper)")
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--tta", action="store_true", help="mirroring test-time augmentation")
    parser.add_argument("--step-size", type=float, default=0.5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument(
        "--orientation",
        default="LPS",
        help="orientation of the export ('as-stored' for nnU-Net's own behaviour)",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--child", nargs=4, metavar=("BACKEND", "MODEL", "CT", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        backend, model, ct, out = args.child
        child(backend, model, ct, out, args.tta, args.device, args.step_size, args.fold)
        return

    from metcli.io.weights import resolve_model
    from metcli.segmentation.export_onnx import export_onnx

    model = resolve_model(args.model)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="metcli-bench-seg-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        orientation = (
            None if args.orientation.lower() in ("as-stored", "none") else args.orientation
        )
        started = time.perf_counter()
        export = export_onnx(model, work / "onnx", fold=args.fold, orientation=orientation)
        export_s = time.perf_counter() - started
        if args.ct:
            scans = [Path(p) for p in args.ct]
        else:
            (work / "scans").mkdir(exist_ok=True)
            scans = make_scans(work / "scans", args.scans, args.seed, args.size)
        print(f"machine: {machine()}")
        print(
            f"model: {model.name} fold {args.fold}; export {export_s:.1f} s, max |ORT - torch| "
            f"{export.max_abs_logit_difference:.2g}; tta {args.tta}; step {args.step_size}; "
            f"device {args.device}"
        )
        print("scan\tshape\tbackend\tdevice\twall_s\tload_s\tpredict_s\tpeak_rss_mb")
        rows = []
        import SimpleITK as sitk

        for ct in scans:
            size = "x".join(str(s) for s in sitk.ReadImage(str(ct)).GetSize())
            results = {}
            for backend, model_path in (("nnunet", model), ("onnx", work / "onnx")):
                out = work / f"{ct.name.split('.')[0]}_{backend}_dseg.nii.gz"
                result = run_child(args, backend, model_path, ct, out)
                result["out"] = out
                results[backend] = result
                print(
                    f"{ct.name}\t{size}\t{backend}\t{result['device']}\t{result['wall_s']:.2f}\t"
                    f"{result['load_s']:.2f}\t{result['predict_s']:.2f}\t"
                    f"{result['peak_rss_mb']:.0f}"
                )
            dice = dice_per_label(results["nnunet"]["out"], results["onnx"]["out"])
            rows.append((ct.name, results, dice))
        print()
        print("scan\twall_ratio\tpredict_ratio\tpeak_rss_ratio\tdice_per_label (nnunet vs onnx)")
        ratios = []
        for name, results, dice in rows:
            n, o = results["nnunet"], results["onnx"]
            ratio = (
                n["wall_s"] / o["wall_s"],
                n["predict_s"] / o["predict_s"],
                n["peak_rss_mb"] / o["peak_rss_mb"],
            )
            ratios.append(ratio)
            print(
                f"{name}\t{ratio[0]:.2f}\t{ratio[1]:.2f}\t{ratio[2]:.2f}\t"
                + ", ".join(f"{k}: {v:.4f}" for k, v in dice.items())
            )
        mean = np.exp(np.mean(np.log(np.asarray(ratios)), axis=0))
        print(
            f"geometric mean (nnU-Net / ONNX): wall {mean[0]:.2f}x, prediction {mean[1]:.2f}x, "
            f"peak memory {mean[2]:.2f}x"
        )
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
