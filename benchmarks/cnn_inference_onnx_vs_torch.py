"""Inference speed of train-cnn's exported DenseNet-121: ONNX Runtime against PyTorch, one run.

The network is the one train-cnn builds and exports (``monai.networks.nets.
DenseNet121``, 2D, one channel, two classes, softmax included, exported by
:func:`metcli.cnn.train_cnn.export_onnx`), with untrained weights (speed does
not depend on them). The inputs are random lesion slices of ``--size`` pixels
(224, the study's). Both runtimes see the same batches:

* CPU: PyTorch (``torch.no_grad``, eval mode) and ONNX Runtime
  (``CPUExecutionProvider``), each with the same number of threads; run with
  one thread (what ``metcli predict`` uses) and with every core. The runs
  alternate (torch, ONNX, torch, ONNX...) so that both see the same load; the
  median slices per second of ``--repeats`` runs is reported, with the ratio
  ONNX / PyTorch and the largest probability difference.
* CUDA (only when PyTorch sees a GPU): PyTorch fp32 and fp16 (``.half()``),
  ONNX Runtime's CUDA provider fp32 and fp16 (the half network exported
  again), when this ONNX Runtime has it. Otherwise the section says it was
  skipped.

    python benchmarks/cnn_inference_onnx_vs_torch.py
    python benchmarks/cnn_inference_onnx_vs_torch.py --slices 128 --batch 32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np


def build(seed: int = 0):
    import torch

    from metcli.cnn.networks import build_network

    torch.manual_seed(seed)
    return build_network("densenet121", 2).eval()


def softmax_net(net):
    import torch

    class WithSoftmax(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, image):
            return torch.softmax(self.inner(image), dim=1)

    return WithSoftmax(net).eval()


def ort_session(model: bytes, providers, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(model, sess_options=options, providers=list(providers))


def run_torch(net, images: np.ndarray, batch: int, device: str = "cpu", half: bool = False):
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(images[start : start + batch]).to(device)
            if half:
                x = x.half()
            out.append(net(x).float().cpu().numpy())
    if device == "cuda":
        torch.cuda.synchronize()
    return np.concatenate(out)


def run_onnx(sess, images: np.ndarray, batch: int, half: bool = False):
    out = []
    for start in range(0, len(images), batch):
        x = images[start : start + batch]
        out.append(sess.run(["probabilities"], {"image": x.astype(np.float16) if half else x})[0])
    return np.concatenate(out).astype(np.float32)


def timed(fn, n_slices: int) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = fn()
    return n_slices / (time.perf_counter() - start), result


def compare(name: str, a_name: str, a_fn, b_name: str, b_fn, n: int, repeats: int) -> dict:
    """Alternate a and b ``repeats`` times after one warm-up each; medians of slices/s."""
    a_fn(), b_fn()  # warm-up (allocations, kernels)
    rates: dict[str, list[float]] = {a_name: [], b_name: []}
    outputs = {}
    for _ in range(repeats):
        for label, fn in ((a_name, a_fn), (b_name, b_fn)):
            rate, outputs[label] = timed(fn, n)
            rates[label].append(rate)
    row = {
        "setting": name,
        a_name: statistics.median(rates[a_name]),
        b_name: statistics.median(rates[b_name]),
        "all_runs": {k: [round(v, 2) for v in vs] for k, vs in rates.items()},
        "max_abs_difference": float(np.max(np.abs(outputs[a_name] - outputs[b_name]))),
    }
    row["ratio"] = row[b_name] / row[a_name]
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--slices", type=int, default=64, help="slices per timed run")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="threads of the all-cores run [all cores]",
    )
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)

    import onnxruntime as ort
    import torch

    from metcli.cnn.train_cnn import export_onnx

    rng = np.random.default_rng(0)
    images = rng.random((args.slices, 1, args.size, args.size), dtype=np.float32)
    net = build()
    onnx_model, parity = export_onnx(net, images[:2])
    wrapped = softmax_net(net)
    report = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "load_average": list(os.getloadavg()),
        },
        "size": args.size,
        "slices": args.slices,
        "batch": args.batch,
        "export_parity": parity,
        "cpu": [],
        "cuda": None,
    }
    print(
        f"DenseNet-121 (MONAI, 2D, 1 channel) at {args.size}x{args.size}, "
        f"{args.slices} slices per run, batch {args.batch}, median of {args.repeats} runs; "
        f"export parity {parity:.1e}"
    )
    before = torch.get_num_threads()
    for threads in sorted({1, args.threads}):
        torch.set_num_threads(threads)
        sess = ort_session(onnx_model, ["CPUExecutionProvider"], threads)
        row = compare(
            f"CPU, {threads} thread(s)",
            "torch",
            lambda: run_torch(wrapped, images, args.batch),
            "onnx",
            lambda: run_onnx(sess, images, args.batch),
            args.slices,
            args.repeats,
        )
        row["threads"] = threads
        report["cpu"].append(row)
        print(
            f"  CPU {threads} thread(s): PyTorch {row['torch']:.1f} slices/s, ONNX Runtime "
            f"{row['onnx']:.1f} slices/s, ratio ONNX/PyTorch {row['ratio']:.2f}x, "
            f"max |difference| {row['max_abs_difference']:.1e}"
        )
    torch.set_num_threads(before)

    if not torch.cuda.is_available():
        print("  CUDA: skipped (PyTorch sees no GPU)")
        report["cuda"] = {"skipped": "PyTorch sees no GPU"}
    else:
        report["cuda"] = cuda_section(net, images, args, onnx_model)
    report["machine"]["load_average_after"] = list(os.getloadavg())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
    return 0


def cuda_section(net, images: np.ndarray, args, onnx_model: bytes) -> dict:
    """PyTorch fp32/fp16 and ONNX Runtime CUDA fp32/fp16 on the GPU."""
    import copy
    import io
    import warnings

    import onnxruntime as ort
    import torch

    result = {"device": torch.cuda.get_device_name(0), "rows": []}
    fp32 = softmax_net(copy.deepcopy(net)).cuda().eval()
    fp16 = softmax_net(copy.deepcopy(net)).cuda().half().eval()
    has_ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    sessions = {}
    if has_ort_cuda:
        sessions["fp32"] = ort_session(onnx_model, ["CUDAExecutionProvider"], None)
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                fp16,
                (torch.zeros(2, 1, args.size, args.size).cuda().half(),),
                buffer,
                dynamo=False,
                input_names=["image"],
                output_names=["probabilities"],
                dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
                opset_version=17,
            )
        sessions["fp16"] = ort_session(buffer.getvalue(), ["CUDAExecutionProvider"], None)
    for precision, model in (("fp32", fp32), ("fp16", fp16)):
        half = precision == "fp16"

        def torch_fn(m=model, h=half):
            return run_torch(m, images, args.batch, "cuda", h)

        if has_ort_cuda:
            sess = sessions[precision]
            row = compare(
                f"CUDA {precision}",
                "torch",
                torch_fn,
                "onnx",
                lambda s=sess, h=half: run_onnx(s, images, args.batch, h),
                args.slices,
                args.repeats,
            )
            print(
                f"  CUDA {precision}: PyTorch {row['torch']:.1f} slices/s, ONNX Runtime "
                f"{row['onnx']:.1f} slices/s, ratio ONNX/PyTorch {row['ratio']:.2f}x, "
                f"max |difference| {row['max_abs_difference']:.1e}"
            )
        else:
            torch_fn()
            rates = [timed(torch_fn, args.slices)[0] for _ in range(args.repeats)]
            row = {
                "setting": f"CUDA {precision}",
                "torch": statistics.median(rates),
                "onnx": None,
                "ratio": None,
            }
            print(
                f"  CUDA {precision}: PyTorch {row['torch']:.1f} slices/s; ONNX Runtime: "
                "skipped (no CUDA provider: install onnxruntime-gpu)"
            )
        result["rows"].append(row)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
