"""The nnU-Net backend of ``metcli segment``: nnunetv2's own predictor, loaded once.

:class:`NnunetSegmenter` wraps ``nnunetv2.inference.predict_from_raw_data.nnUNetPredictor``
(nnU-Net's preprocessing, Gaussian sliding window, optional mirroring, resampling
back) for a standard nnU-Net v2 trained-model folder::

    MODEL_DIR/dataset.json
    MODEL_DIR/plans.json
    MODEL_DIR/fold_<k>/checkpoint_final.pth   (one or more folds, or fold_all)

The model is loaded when the segmenter is made; :meth:`NnunetSegmenter.predict`
then segments one CT after another. The CT is given to nnU-Net as its
``SimpleITKIO`` reader would (the voxel array indexed [z, y, x] with the
spacing reversed to match), so a model predicts here what it predicts with
``nnUNetv2_predict``; the label image comes back on the CT's own grid, in the
model's own labels.

Side effects are contained: nnunetv2 is imported lazily, inside this module's
functions, with ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results``
pointing to a temporary folder when they are unset (older nnunetv2 versions
print warnings on import otherwise) and restored afterwards; what nnU-Net prints
goes to this module's logger at debug level, never to stdout.

Checkpoints are pickles. They are loaded weights-only, with numpy scalars and
dtypes allowed (:func:`metcli.segmentation.checkpoints.load_checkpoint`, shared with the ONNX
export); metcli never unpickles a checkpoint fully.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from metcli.core.errors import InputError, UsageError

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint_final.pth"
NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
DEVICES = ("auto", "cpu", "cuda")
MODEL_FOLDER_FIX = (
    "give a standard nnU-Net v2 trained-model folder (dataset.json, plans.json "
    "and fold_<k>/checkpoint_final.pth), for example "
    "nnUNet_results/DatasetXXX_Name/nnUNetTrainer__nnUNetPlans__3d_fullres"
)


# ----------------------------------------------------------------------------- model folders
def _read_json(path: Path, what: str) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(
            f"cannot read the model's {what} ({exc.strerror})", path=path, fix=MODEL_FOLDER_FIX
        ) from None
    except ValueError as exc:
        raise InputError(
            f"the model's {what} is not valid JSON ({exc})", path=path, fix=MODEL_FOLDER_FIX
        ) from None
    if not isinstance(doc, dict):
        raise InputError(
            f"the model's {what} is not a JSON object", path=path, fix=MODEL_FOLDER_FIX
        )
    return doc


def available_folds(model_dir: str | Path, checkpoint_name: str = CHECKPOINT_NAME) -> list[str]:
    """The folds (``"0"``, ``"1"``..., ``"all"``) of a model folder that hold a checkpoint."""
    found = []
    for sub in sorted(Path(model_dir).glob("fold_*")):
        if sub.is_dir() and (sub / checkpoint_name).is_file():
            found.append(sub.name[len("fold_") :])
    numeric = sorted((f for f in found if f.isdigit()), key=int)
    return numeric + [f for f in found if not f.isdigit()]


def resolve_folds(
    model_dir: str | Path, folds: Sequence[int | str] | None, checkpoint_name: str = CHECKPOINT_NAME
) -> list[str]:
    """The folds to use: all numbered folds found (else ``all``), or the requested ones."""
    found = available_folds(model_dir, checkpoint_name)
    if not folds:
        numeric = [f for f in found if f.isdigit()]
        chosen = numeric or found
        if not chosen:
            raise InputError(
                f"no fold_<k>/{checkpoint_name} in the model folder",
                path=model_dir,
                fix=MODEL_FOLDER_FIX,
            )
        return chosen
    chosen = []
    for fold in folds:
        text = str(fold).strip()
        if not (text.isdigit() or text == "all"):
            raise UsageError(f"--folds {fold!r} is not a fold number or 'all'")
        text = str(int(text)) if text.isdigit() else text
        if text not in found:
            raise InputError(
                f"fold {text} has no fold_{text}/{checkpoint_name}",
                path=model_dir,
                fix=f"choose among the folds found: {', '.join(found) or '(none)'}",
            )
        if text not in chosen:
            chosen.append(text)
    return chosen


def read_model_folder(model_dir: str | Path) -> tuple[dict, dict]:
    """(dataset.json, plans.json) of an nnU-Net v2 model folder, checked; no torch needed."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError("the model folder does not exist", path=model_dir, fix=MODEL_FOLDER_FIX)
    for name in ("plans.json", "dataset.json"):
        if not (model_dir / name).is_file():
            raise InputError(
                f"the model folder has no {name}, so it is not an nnU-Net v2 trained-model folder",
                path=model_dir,
                fix=MODEL_FOLDER_FIX,
            )
    dataset = _read_json(model_dir / "dataset.json", "dataset.json")
    plans = _read_json(model_dir / "plans.json", "plans.json")
    if not isinstance(plans.get("configurations"), dict) or not plans["configurations"]:
        raise InputError(
            "plans.json has no configurations", path=model_dir / "plans.json", fix=MODEL_FOLDER_FIX
        )
    channels = dataset.get("channel_names") or dataset.get("modality")
    if not isinstance(channels, dict) or not channels:
        raise InputError(
            "dataset.json names no input channels (channel_names)",
            path=model_dir / "dataset.json",
            fix=MODEL_FOLDER_FIX,
        )
    if len(channels) != 1:
        raise InputError(
            f"the model takes {len(channels)} input channels "
            f"({', '.join(map(str, channels.values()))}); metcli segment gives one CT",
            path=model_dir / "dataset.json",
            fix="use a single-channel (CT) nnU-Net model",
        )
    model_labels(dataset, path=model_dir / "dataset.json")
    return dataset, plans


def model_labels(dataset: dict, *, path: str | Path | None = None) -> dict[str, int]:
    """The label values a model writes, by name, from its dataset.json.

    Plain label maps give ``{name: value}``; region-based models (label values are
    lists) write, for each region in dataset.json order, its ``regions_class_order``
    value, as nnU-Net does.
    """
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise InputError("dataset.json has no labels", path=path, fix=MODEL_FOLDER_FIX)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):
        return {str(k): int(v) for k, v in labels.items()}
    order = dataset.get("regions_class_order")
    regions = [str(k) for k in labels if k != "background"]
    if not isinstance(order, list) or len(order) != len(regions):
        raise InputError(
            "dataset.json has region-based labels without a matching regions_class_order",
            path=path,
            fix=MODEL_FOLDER_FIX,
        )
    out = {"background": 0}
    out.update({name: int(value) for name, value in zip(regions, order)})
    return out


# ----------------------------------------------------------------------------- nnU-Net, quietly
@contextlib.contextmanager
def nnunet_environment() -> Iterator[None]:
    """nnU-Net's folder variables set (to a temporary folder where unset), then restored."""
    saved = {key: os.environ.get(key) for key in NNUNET_FOLDERS}
    tmp = None
    if any(value is None for value in saved.values()):
        tmp = tempfile.mkdtemp(prefix="metcli-nnunet-")
        for key, value in saved.items():
            if value is None:
                os.environ[key] = os.path.join(tmp, key)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def quiet_nnunet(what: str) -> Iterator[None]:
    """nnU-Net's folder variables set and its prints sent to the debug log, not stdout."""
    buffer = io.StringIO()
    caught: list = []
    try:
        with (
            nnunet_environment(),
            contextlib.redirect_stdout(buffer),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always", FutureWarning)
            warnings.simplefilter("always", DeprecationWarning)
            yield
    finally:
        text = buffer.getvalue().strip()
        if text:
            log.debug("nnU-Net (%s) printed:\n%s", what, text)
        for item in caught or ():
            log.debug("nnU-Net (%s) warned: %s", what, item.message)


def import_nnunet():
    """nnunetv2's predictor class, imported without side effects on stdout or os.environ."""
    try:
        with quiet_nnunet("import"):
            from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    except ImportError as exc:
        raise UsageError(
            f"the nnU-Net backend needs nnunetv2 and torch ({exc})",
            fix="pip install nnunetv2 (it installs torch), or use --backend onnx",
        ) from None
    return nnUNetPredictor


def resolve_device(device: str):
    """The torch.device of metcli's device rule (:func:`metcli.core.devices.torch_device`)."""
    import torch

    from metcli.core.devices import torch_device

    return torch.device(torch_device(device))


def _check_step_size(step_size) -> None:
    if (
        isinstance(step_size, bool)
        or not isinstance(step_size, (int, float))
        or not 0 < step_size <= 1
    ):
        raise UsageError(f"--step-size must be a number in (0, 1], got {step_size!r}")


# ----------------------------------------------------------------------------- the segmenter
class NnunetSegmenter:
    """An nnU-Net v2 model folder, loaded once, that segments CT images.

    Args:
        model_dir: the trained-model folder (dataset.json, plans.json, fold_k/...).
        device: ``auto`` (CUDA when torch sees a GPU), ``cpu`` or ``cuda``.
        folds: folds to ensemble (numbers or ``all``); None = every fold found.
        tta: test-time augmentation by mirroring (nnU-Net's default), along the axes
            the checkpoint allows.
        step_size: sliding-window step as a fraction of the patch (0 < step <= 1;
            nnU-Net's default 0.5).
        checkpoint_name: the checkpoint file in each fold folder.
        threads: PyTorch's CPU threads while a CT is segmented (set and restored
            around each :meth:`predict`, :func:`metcli.core.threads.limit_cpu_threads`;
            nnU-Net itself uses at most ``nnUNet_def_n_proc``, 8 by default);
            None = torch's number when the segmenter is made.
        orientation: a three-letter code (SimpleITK ``DICOMOrient``, e.g. ``LPS``)
            to bring every CT to before it is given to nnU-Net (a lossless
            permutation/flip of axes; the labels are mapped back onto the CT's own
            grid), as the ONNX backend does; None feeds the array as stored, which is
            what nnU-Net's SimpleITKIO does.

    Attributes:
        labels: the model's labels, ``{name: value}`` (dataset.json).
        folds: the folds in use.
        configuration: the nnU-Net configuration of the checkpoint (``3d_fullres``...).
        device: the torch device.
        threads: PyTorch's CPU threads of :meth:`predict`.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str = "auto",
        folds: Sequence[int | str] | None = None,
        tta: bool = True,
        step_size: float = 0.5,
        checkpoint_name: str = CHECKPOINT_NAME,
        orientation: str | None = None,
        threads: int | None = None,
    ):
        from metcli.core.threads import check_threads

        check_threads(threads)
        _check_step_size(step_size)
        self.model_dir = Path(model_dir)
        self.dataset_json, self.plans = read_model_folder(self.model_dir)
        self.labels = model_labels(self.dataset_json, path=self.model_dir / "dataset.json")
        self.folds = resolve_folds(self.model_dir, folds, checkpoint_name)
        self.tta = bool(tta)
        self.step_size = float(step_size)
        self.orientation = orientation
        if orientation is not None:
            from metcli.segmentation.orientation import orientation_transform

            orientation_transform((1, 0, 0, 0, 1, 0, 0, 0, 1), orientation)  # validates it
        predictor_class = import_nnunet()
        self.device = resolve_device(device)
        import torch

        self.threads = threads or torch.get_num_threads()
        checkpoints = self._load_checkpoints(checkpoint_name)
        configuration_manager = self._make_predictor(predictor_class, checkpoints)
        self.patch_size = tuple(int(p) for p in configuration_manager.patch_size)
        self.spacing = tuple(float(s) for s in configuration_manager.spacing)
        log.info(
            "nnU-Net model %s: configuration %s, folds %s, patch %s, spacing %s mm, "
            "device %s, mirroring %s",
            self.model_dir.name,
            self.configuration,
            ",".join(self.folds),
            self.patch_size,
            self.spacing,
            self.device,
            "on" if self.tta else "off",
        )

    def _load_checkpoints(self, checkpoint_name: str) -> list[dict]:
        """Each fold's checkpoint; sets the configuration they were trained with."""
        from metcli.segmentation.checkpoints import load_checkpoint

        checkpoints = [
            load_checkpoint(self.model_dir / f"fold_{fold}" / checkpoint_name)[0]
            for fold in self.folds
        ]
        init_args = checkpoints[0].get("init_args") or {}
        self.configuration = str(init_args.get("configuration", ""))
        if self.configuration not in self.plans["configurations"]:
            raise InputError(
                f"the checkpoint's configuration {self.configuration!r} is not in "
                f"plans.json ({', '.join(self.plans['configurations'])})",
                path=self.model_dir / "plans.json",
                fix=MODEL_FOLDER_FIX,
            )
        return checkpoints

    def _make_predictor(self, predictor_class, checkpoints: list[dict]):
        """nnU-Net's predictor with the network and every fold's weights; its configuration
        manager."""
        first = checkpoints[0]
        mirror_axes = first.get("inference_allowed_mirroring_axes")
        mirror_axes = None if mirror_axes is None else tuple(int(a) for a in mirror_axes)
        with quiet_nnunet("load"):
            self._predictor = predictor_class(
                tile_step_size=self.step_size,
                use_gaussian=True,
                use_mirroring=self.tta,
                perform_everything_on_device=self.device.type == "cuda",
                device=self.device,
                verbose=False,
                verbose_preprocessing=False,
                allow_tqdm=False,
            )
            network, plans_manager, configuration_manager = self._build_network(
                str(first.get("trainer_name") or "nnUNetTrainer")
            )
            parameters = [c["network_weights"] for c in checkpoints]
            try:
                network.load_state_dict(parameters[0])
            except RuntimeError as exc:
                raise InputError(
                    "the checkpoint's weights do not fit the network that "
                    f"plans.json describes ({str(exc).splitlines()[0][:160]})",
                    path=self.model_dir,
                    fix=MODEL_FOLDER_FIX,
                ) from None
            self._predictor.manual_initialization(
                network,
                plans_manager,
                configuration_manager,
                parameters,
                self.dataset_json,
                str(first.get("trainer_name") or "nnUNetTrainer"),
                mirror_axes,
            )
        return configuration_manager

    def _build_network(self, trainer_name: str):
        """The network of the plans, built the way the checkpoint's trainer builds it."""
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        plans_manager = PlansManager(self.plans)
        configuration_manager = plans_manager.get_configuration(self.configuration)
        trainer_class = nnUNetTrainer
        if trainer_name != "nnUNetTrainer":
            from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

            try:
                trainer_class = recursive_find_trainer_class_by_name(trainer_name)
            except (RuntimeError, AssertionError, ImportError):
                log.warning(
                    "trainer class %s is not installed; building the network with "
                    "nnUNetTrainer's (the same unless that trainer changes the "
                    "architecture)",
                    trainer_name,
                )
        inputs = determine_num_input_channels(
            plans_manager, configuration_manager, self.dataset_json
        )
        outputs = plans_manager.get_label_manager(self.dataset_json).num_segmentation_heads
        try:
            network = trainer_class.build_network_architecture(
                plans_manager, configuration_manager, inputs, outputs, enable_deep_supervision=False
            )
        except (KeyError, TypeError, ValueError, ImportError, AttributeError) as exc:
            raise InputError(
                f"plans.json does not describe a network nnU-Net can build "
                f"({type(exc).__name__}: {exc})",
                path=self.model_dir / "plans.json",
                fix=MODEL_FOLDER_FIX,
            ) from None
        return network, plans_manager, configuration_manager

    def sidecar_fields(self) -> dict:
        """Fields ``segment`` adds to each sidecar: PyTorch's CPU threads (not a setting)."""
        return {"TorchThreads": int(self.threads)}

    def predict(self, ct):
        """Segment one CT (a 3D SimpleITK image): a label image on the CT's grid.

        The labels are the model's own (see :attr:`labels`); the image has the CT's
        size, spacing, origin and direction.
        """
        import SimpleITK as sitk

        from metcli.core.threads import limit_cpu_threads
        from metcli.segmentation.orientation import orientation_transform
        from metcli.segmentation.streaming import check_ct_image

        check_ct_image(ct)
        # the voxels as stored (no float32 copy: nnU-Net's preprocessing makes its own)
        array = sitk.GetArrayViewFromImage(ct)
        orient = orientation_transform(ct.GetDirection(), self.orientation)
        spacing_zyx = orient.spacing_zyx([float(s) for s in reversed(ct.GetSpacing())])
        oriented = np.ascontiguousarray(orient.forward(array))
        with limit_cpu_threads(self.threads), quiet_nnunet("predict"):
            segmentation = self._predictor.predict_single_npy_array(
                oriented[None], {"spacing": spacing_zyx}, None, None, False
            )
        segmentation = np.ascontiguousarray(orient.backward(np.asarray(segmentation)))
        if segmentation.shape != array.shape:
            raise RuntimeError(
                f"nnU-Net returned shape {segmentation.shape} for an image of shape {array.shape}"
            )
        dtype = np.uint8 if max(self.labels.values()) < 256 else np.uint16
        out = sitk.GetImageFromArray(segmentation.astype(dtype, copy=False))
        out.CopyInformation(ct)
        return out


def check_ct(ct) -> np.ndarray:
    """The CT's voxels as float32 [z, y, x], or an :class:`ImageError` for unusable images."""
    import SimpleITK as sitk

    from metcli.segmentation.streaming import check_ct_image

    check_ct_image(ct)
    return sitk.GetArrayFromImage(ct).astype(np.float32, copy=False)
