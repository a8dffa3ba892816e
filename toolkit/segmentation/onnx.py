"""Segment CT with an nnU-Net network exported to ONNX, reproducing nnU-Net's inference.

:class:`OnnxSegmenter` loads a folder written by ``metcli export-onnx`` (``model.onnx``
and ``preprocessing.json``, see ``docs/onnx.md``) once and segments many CTs. It
needs numpy, scipy, scikit-image, SimpleITK and ONNX Runtime only: no torch, no
nnunetv2. Every step does what nnU-Net v2's predictor does (2.x, read from its
source: ``preprocessors/default_preprocessor.py``, ``resampling/default_resampling.py``,
``normalization/default_normalization_schemes.py``, ``inference/predict_from_raw_data.py``,
``inference/sliding_window_prediction.py``, ``inference/export_prediction.py``):

1. the CT is optionally brought to the orientation the model was trained in (a
   lossless permutation/flip of axes,
   :func:`metcli.segmentation.orientation.orientation_transform`); nnU-Net
   itself feeds arrays as they are stored, which is ``orientation: null``;
2. the array is indexed [z, y, x] with the spacing reversed (SimpleITK's order, as
   nnU-Net's ``SimpleITKIO``), then transposed by the plans' ``transpose_forward``;
3. it is cropped to the bounding box of its nonzero voxels;
4. it is normalised (CT: clip to the training foreground's 0.5/99.5 percentiles,
   subtract its mean, divide by its std);
5. it is resampled to the target spacing: third-order spline, with the
   out-of-plane axis handled separately (nearest neighbour) when the spacing is
   anisotropic (steps 3 to 5: :mod:`metcli.segmentation.preprocessing`);
6. a Gaussian-weighted sliding window (sigma 1/8 of the patch) predicts logits,
   optionally averaging the 2^k mirrored inputs (test-time augmentation;
   :mod:`metcli.segmentation.sliding_window`);
7. the logits are resampled back to the cropped grid (first order), turned into
   probabilities (softmax) and labels (argmax), put back into the uncropped
   array, transposed back, and returned on the CT's exact grid.

Memory: steps 2 to 5 read the CT's own array block by block
(:mod:`metcli.segmentation.streaming`), and step 7 gives the labels slab by slab
without full-size logits (:mod:`metcli.segmentation.resample_back`); both give the
same numbers as the whole-volume computation of
:mod:`metcli.segmentation.preprocessing`, which :meth:`OnnxSegmenter.predict_with_probabilities`
still uses for the (full-size) probabilities.

Differences from nnU-Net that remain are described in ``docs/onnx.md``, with the
figures of the agreement between the two.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from metcli.core.errors import ImageError, InputError, UsageError
from metcli.segmentation.orientation import AS_STORED, orientation_transform
from metcli.segmentation.preprocessing import (
    ANISOTROPY_THRESHOLD,
    compute_new_shape,
    resample_to_shape,
)
from metcli.segmentation.sliding_window import (
    gaussian_importance,
    mirror_combinations,
    pad_to_patch,
    sliding_window_steps,
)

log = logging.getLogger(__name__)

#: The files of an exported model folder.
ONNX_FILE = "model.onnx"
SPEC_FILE = "preprocessing.json"
SPEC_SCHEMA = "onnx_segmentation"
SPEC_FORMAT = "metcli-onnx-segmentation"

#: The resampling function of nnU-Net's default plans, the only one reproduced.
SUPPORTED_RESAMPLING = ("resample_data_or_seg_to_shape",)
#: Normalisation schemes of nnU-Net reproduced here (nnU-Net class names).
SUPPORTED_NORMALIZATION = (
    "CTNormalization",
    "ZScoreNormalization",
    "NoNormalization",
    "RescaleTo01Normalization",
)
DEVICES = ("auto", "cpu", "cuda")
ACCUMULATE = ("float16", "float32")
CUDA_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"
#: Most inputs per ONNX Runtime call (tiles x mirrored copies).
MAX_BATCH = 8


# ============================================================================ the spec
def load_spec(model_dir: str | Path) -> dict:
    """``preprocessing.json`` of an exported model folder, checked against its schema."""
    from metcli.io.files import read_json

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(
            "ONNX model folder not found",
            path=model_dir,
            fix="give the folder written by 'metcli export-onnx'",
        )
    spec_path = model_dir / SPEC_FILE
    if not spec_path.is_file():
        hint = (
            " (this is an nnU-Net model folder: export it first with "
            "'metcli export-onnx MODEL_DIR OUT_DIR')"
            if (model_dir / "plans.json").is_file()
            else ""
        )
        raise InputError(
            f"no {SPEC_FILE} in the ONNX model folder{hint}",
            path=model_dir,
            fix="give the folder written by 'metcli export-onnx'",
        )
    spec = read_json(spec_path, schema=SPEC_SCHEMA)
    check_spec_supported(spec, where=spec_path)
    return spec


def check_spec_supported(spec: dict, *, where: str | Path | None = None) -> None:
    """Refuse what this backend does not reproduce (with the reason and a way out)."""
    norm = spec["normalization"]["scheme"]
    if norm not in SUPPORTED_NORMALIZATION:
        raise InputError(
            f"normalisation scheme {norm!r} is not reproduced by the ONNX backend "
            f"(it does {', '.join(SUPPORTED_NORMALIZATION)})",
            path=where,
            fix="use the nnU-Net backend for this model",
        )
    for key in ("data", "probabilities"):
        function = spec["resampling"][key]["function"]
        if function not in SUPPORTED_RESAMPLING:
            raise InputError(
                f"resampling function {function!r} ({key}) is not reproduced by the "
                f"ONNX backend (it does {', '.join(SUPPORTED_RESAMPLING)})",
                path=where,
                fix="use the nnU-Net backend for this model",
            )


def spec_labels(model_dir: Path) -> dict[str, int]:
    """The labels ``{name: value}`` of an export's ``preprocessing.json``, without loading it."""
    from metcli.io.files import read_json

    spec = read_json(model_dir / SPEC_FILE)
    labels = spec.get("labels") if isinstance(spec, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise InputError(
            f"{SPEC_FILE} has no labels",
            path=model_dir,
            fix="export the model again with metcli export-onnx",
        )
    return {str(k): int(v) for k, v in labels.items()}


def export_orientation(model_dir: Path, wanted: str | None) -> str:
    """The orientation an export was made for; another one asked for is refused."""
    from metcli.io.files import read_json

    spec = read_json(model_dir / SPEC_FILE)
    axes = spec.get("axes") if isinstance(spec, dict) else None
    own = (axes or {}).get("orientation") if isinstance(axes, dict) else None
    own = AS_STORED if own is None else str(own)
    if wanted is not None and str(wanted).strip().upper() != own.upper():
        raise UsageError(
            f"--orientation {wanted} differs from the {own} the ONNX export was made for",
            fix=f"leave --orientation out, or export again with "
            f"metcli export-onnx --orientation {wanted}",
        )
    return own


# ============================================================================ the segmenter
class OnnxSegmenter:
    """An nnU-Net model exported to ONNX, loaded once to segment many CTs.

    Args:
        model_dir: a folder written by ``metcli export-onnx`` (``model.onnx`` and
            ``preprocessing.json``); the ONNX file's sha256 is checked against the spec.
        device: ``auto`` (CUDA when ONNX Runtime has it, else the CPU), ``cuda``
            (falls back to the CPU with a warning when unavailable) or ``cpu``.
        tta: average the predictions of the mirrored inputs (nnU-Net's test-time
            augmentation, over the axes the model allows).
        step_size: sliding-window step as a fraction of the patch (0 < s <= 1).
        accumulate: ``float16`` sums the weighted tiles and resamples the logits in
            half precision, exactly as nnU-Net's predictor does (so that the two agree
            to the rounding); ``float32`` keeps single precision throughout (more
            precise at the image borders, where nnU-Net's float16 tile weights are
            subnormal).
        threads: ONNX Runtime's intra-op threads (default: its own choice).
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str = "auto",
        tta: bool = True,
        step_size: float = 0.5,
        accumulate: str = "float16",
        threads: int | None = None,
    ):
        if device not in DEVICES:
            raise UsageError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
        if (
            isinstance(step_size, bool)
            or not isinstance(step_size, (int, float))
            or not 0 < step_size <= 1
        ):
            raise UsageError(
                f"step_size must be a number in (0, 1], got {step_size!r}",
                fix="use 0.5 (nnU-Net's default) or a larger value for speed",
            )
        if accumulate not in ACCUMULATE:
            raise UsageError(
                f"accumulate must be one of {', '.join(ACCUMULATE)}, got {accumulate!r}"
            )
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise UsageError(f"threads must be a positive integer, got {threads!r}")
        self.model_dir = Path(model_dir)
        self.spec = load_spec(self.model_dir)
        self.tta = bool(tta)
        self.step_size = float(step_size)
        self.accumulate = accumulate
        self._half = accumulate == "float16"
        self.device_requested = device
        onnx_path = self.model_dir / self.spec["onnx"]["file"]
        self.model_sha256 = _checked_sha256(onnx_path, self.spec["onnx"]["sha256"])
        self._session, self.provider = _make_session(onnx_path, device, threads)
        #: Where inference runs: ``cuda`` or ``cpu``.
        self.device = "cuda" if self.provider == CUDA_PROVIDER else "cpu"
        self._input_name = self._session.get_inputs()[0].name
        self._patch = tuple(int(p) for p in self.spec["patch_size"])
        self._gaussian = gaussian_importance(
            self._patch, self.spec["inference"]["gaussian_sigma_scale"], half=self._half
        )
        mirror_axes = self.spec["inference"]["mirror_axes"] or []
        self._mirrors = mirror_combinations(mirror_axes) if self.tta else [()]
        if self.tta and not mirror_axes:
            log.info("the model allows no mirroring; test-time augmentation is off")
        self._values = sorted(int(v) for v in self.spec["labels"].values())

    # ------------------------------------------------------------------ public
    @property
    def labels(self) -> dict[str, int]:
        """The model's own labels, ``{name: value}`` (background 0)."""
        return {str(k): int(v) for k, v in self.spec["labels"].items()}

    @property
    def settings(self) -> dict[str, Any]:
        """What provenance should record about this segmenter."""
        return {
            "backend": "onnx",
            "model_sha256": self.model_sha256,
            "tta": self.tta,
            "mirror_axes": sorted({a for m in self._mirrors for a in m}),
            "step_size": self.step_size,
            "accumulate": self.accumulate,
            "execution_provider": self.provider,
            "orientation": self.spec["axes"]["orientation"],
        }

    def sidecar_fields(self) -> dict[str, Any]:
        """Fields ``segment`` adds to each sidecar for this backend: none."""
        return {}

    def predict(self, ct, *, progress: Callable[[int, int], None] | None = None):
        """The label image (the model's labels) of ``ct`` on its exact grid."""
        labels, _ = self._predict(ct, probabilities=False, progress=progress)
        return labels

    def predict_with_probabilities(self, ct, *, progress: Callable[[int, int], None] | None = None):
        """``(label_image, probabilities)``: probabilities are float32 (C, z, y, x) on ``ct``'s
        array grid, channel ``i`` for the ``i``-th smallest label value."""
        return self._predict(ct, probabilities=True, progress=progress)

    # ------------------------------------------------------------------ steps
    def _predict(self, ct, *, probabilities: bool, progress):
        """Steps 1 to 7 (see the module); the CT's own array is read, never copied whole."""
        import SimpleITK as sitk

        from metcli.segmentation.streaming import CtSource, resample_source

        view, spacing_zyx = _ct_view(ct)
        axes = self.spec["axes"]
        orient = orientation_transform(ct.GetDirection(), axes["orientation"])
        forward = [int(a) for a in axes["transpose_forward"]]
        backward = [int(a) for a in axes["transpose_backward"]]
        oriented = orient.forward(view).transpose(forward)
        spacing = orient.spacing_zyx(spacing_zyx)
        spacing = [spacing[a] for a in forward]
        source = CtSource(
            oriented,
            self.spec["normalization"],
            crop_to_nonzero=self.spec.get("crop_to_nonzero", True),
        )
        target = [float(s) for s in self.spec["target_spacing"]]
        new_shape = compute_new_shape(source.shape, spacing, target)
        data = resample_source(source, new_shape, spacing, target, **self._resampling("data"))
        log.debug(
            "shape %s -> cropped %s -> resampled %s (spacing %s -> %s)",
            oriented.shape,
            source.shape,
            data.shape[1:],
            spacing,
            target,
        )
        logits = self._sliding_window(data, progress)
        del data
        seg = self._labels(logits, source, oriented.shape, spacing, target)
        label_image = sitk.GetImageFromArray(
            np.ascontiguousarray(orient.backward(seg.transpose(backward)))
        )
        del seg
        label_image.CopyInformation(ct)
        if not probabilities:
            return label_image, None
        # the probabilities are full-size by nature: resample the whole logits
        logits = resample_to_shape(
            logits, source.shape, target, spacing, **self._resampling("probabilities")
        )
        probs = _softmax(logits.astype(np.float32))
        del logits
        full = np.zeros((probs.shape[0], *oriented.shape), dtype=np.float32)
        full[0] = 1.0
        full[(slice(None),) + source.crop] = probs
        full = full.transpose([0, *[a + 1 for a in backward]])
        return label_image, np.ascontiguousarray(orient.backward(full))

    def _resampling(self, key: str) -> dict[str, Any]:
        """Keyword arguments of the resampling of ``data`` or ``probabilities``."""
        rs = self.spec["resampling"]
        return {
            "order": rs[key]["order"],
            "order_z": rs[key]["order_z"],
            "force_separate_z": rs[key]["force_separate_z"],
            "threshold": float(rs.get("anisotropy_threshold", ANISOTROPY_THRESHOLD)),
        }

    def _labels(self, logits, source, full_shape, spacing, target) -> np.ndarray:
        """The labels (the model's values) on the uncropped grid, slab by slab."""
        from metcli.segmentation.resample_back import LabelResampler
        from metcli.segmentation.streaming import BLOCK_VOXELS

        values = np.asarray(self._values)
        dtype = np.uint8 if values.max() < 256 else np.uint16
        values = values.astype(dtype)
        seg = np.zeros(full_shape, dtype=dtype)
        inside = seg[source.crop]
        kwargs = self._resampling("probabilities")
        resampler = LabelResampler(logits, source.shape, target, spacing, **kwargs)
        if not resampler.supported:  # not streamed: resample every channel whole
            whole = resample_to_shape(logits, source.shape, target, spacing, **kwargs)
            inside[...] = values[np.argmax(whole, axis=0)]
            return seg
        step = max(1, BLOCK_VOXELS // max(1, inside.shape[1] * inside.shape[2]))
        for first in range(0, inside.shape[0], step):
            stop = min(first + step, inside.shape[0])
            inside[first:stop] = values[resampler.labels(first, stop)]
        return seg

    def _sliding_window(self, data: np.ndarray, progress) -> np.ndarray:
        """Logits (heads, ...) of the preprocessed ``data`` (C, ...), Gaussian-weighted tiles."""
        padded, unpad = pad_to_patch(data, self._patch)
        steps = sliding_window_steps(padded.shape[1:], self._patch, self.step_size)
        tiles = [
            tuple(slice(s, s + p) for s, p in zip(start, self._patch))
            for start in itertools.product(*steps)
        ]
        heads = len(self._values)
        dtype = np.float16 if self._half else np.float32
        logits = np.zeros((heads, *padded.shape[1:]), dtype=dtype)
        weight = np.zeros(padded.shape[1:], dtype=dtype)
        gaussian = self._gaussian
        mirrors = self._mirrors
        per_call = max(1, MAX_BATCH // len(mirrors))
        done = 0
        for first in range(0, len(tiles), per_call):
            group = tiles[first : first + per_call]
            batch = []
            for tile in group:
                patch = padded[(slice(None),) + tile]
                for axes in mirrors:
                    batch.append(np.flip(patch, [a + 1 for a in axes]) if axes else patch)
            inputs = {self._input_name: np.ascontiguousarray(np.stack(batch))}
            out = self._session.run(None, inputs)[0]
            for t, tile in enumerate(group):
                pred = None
                for m, axes in enumerate(mirrors):
                    one = out[t * len(mirrors) + m]
                    one = np.flip(one, [a + 1 for a in axes]) if axes else one
                    pred = one.astype(np.float32) if pred is None else pred + one
                if len(mirrors) > 1:
                    pred /= len(mirrors)
                pred *= gaussian
                where = (slice(None),) + tile
                # float16: each sum is computed in float32 and rounded, as torch does in place.
                logits[where] = (logits[where].astype(np.float32) + pred).astype(dtype)
                weight[tile] = (weight[tile].astype(np.float32) + gaussian).astype(dtype)
            done += len(group)
            if progress is not None:
                progress(done, len(tiles))
        logits = (logits.astype(np.float32) / weight.astype(np.float32)).astype(dtype)
        if not np.all(np.isfinite(logits)):
            raise InputError(
                "the network produced non-finite logits",
                fix="check the CT's intensities and the exported model",
            )
        return logits[(slice(None),) + unpad]


# ============================================================================ helpers
def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=0, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=0, keepdims=True)
    return shifted.astype(np.float32, copy=False)


def _ct_view(ct) -> tuple[np.ndarray, list[float]]:
    """The CT's voxels [z, y, x] as a view of the image (no copy) and its spacing in the
    same order; checked."""
    import SimpleITK as sitk

    from metcli.segmentation.streaming import count_nonfinite

    if not isinstance(ct, sitk.Image):
        raise UsageError(
            f"ct must be a SimpleITK image, got {type(ct).__name__}",
            fix="read it with metcli.io.files.read_image",
        )
    if ct.GetNumberOfComponentsPerPixel() != 1:
        raise ImageError(
            f"the CT has {ct.GetNumberOfComponentsPerPixel()} components per voxel; "
            "a scalar image is needed",
            fix="give a single-channel CT",
        )
    if ct.GetDimension() != 3:
        raise ImageError(
            f"the CT is {ct.GetDimension()}D; a 3D volume is needed", fix="give a 3D CT volume"
        )
    view = sitk.GetArrayViewFromImage(ct)
    bad = count_nonfinite(view)
    if bad:
        raise ImageError(
            f"the CT has {bad} voxel(s) that are NaN or infinite",
            fix="repair or re-export the image (every voxel needs a value in HU)",
        )
    spacing = [abs(float(s)) for s in ct.GetSpacing()[::-1]]
    return view, spacing


def _checked_sha256(path: Path, expected: str) -> str:
    from metcli.io.files import sha256_file

    if not path.is_file():
        raise InputError(
            "the ONNX file named in preprocessing.json is missing",
            path=path,
            fix="export the model again with 'metcli export-onnx'",
        )
    actual = sha256_file(path)
    if actual != expected:
        raise InputError(
            f"the ONNX file's sha256 {actual[:12]}... differs from the "
            f"{expected[:12]}... recorded in {SPEC_FILE}",
            path=path,
            fix="export the model again with 'metcli export-onnx' (the file was "
            "changed or corrupted)",
        )
    return actual


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _make_session(onnx_path: Path, device: str, threads: int | None):
    """An ONNX Runtime session by metcli's device rule (:mod:`metcli.core.devices`)."""
    import onnxruntime as ort

    from metcli.core.devices import start_session

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    return start_session(onnx_path, device, options=options)
