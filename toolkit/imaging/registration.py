"""Rigid and affine registration of a channel to the reference channel, and its record.

:func:`register` aligns a moving image (a CT phase, an MR sequence) to a fixed one (the
reference channel, which the lesion map belongs to) with SimpleITK's
``ImageRegistrationMethod``: Mattes mutual information (so intensities may differ
between phases and sequences), a multi-resolution pyramid, regular-step gradient descent
with scales from physical shifts, and optionally a fixed-image mask (the liver, dilated).
Sampling uses a fixed seed and a fixed number of threads, so the same inputs give the same
parameters.

The result, a :class:`Registration`, maps reference (fixed) physical points to channel
(moving) points, as SimpleITK's resampling expects. :meth:`Registration.as_record` gives a
JSON-able dict for provenance and :meth:`Registration.from_record` rebuilds it;
:func:`read_transform` reads a transform written by SimpleITK or ITK (``.tfm``, ``.txt``,
``.h5``), for example one exported by elastix. Only linear (rigid, affine) transforms are
handled: nothing here is deformable.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metcli.core.errors import GeometryError, ImageError, InputError, UsageError
from metcli.imaging.geometry import to_reference_grid

log = logging.getLogger(__name__)

KINDS = ("rigid", "affine")
#: registration kind -> SimpleITK transform class
TRANSFORM_CLASSES = {"rigid": "Euler3DTransform", "affine": "AffineTransform"}
#: What a transform maps, as recorded.
MAPS = "reference (fixed) physical points (mm) -> channel (moving) physical points (mm)"
#: ITK's Euler3DTransform (ComputeZYX off): R = Rz @ Rx @ Ry.
EULER_ORDER = "R = Rz Rx Ry (ITK Euler3DTransform; angles about x, y, z)"


@dataclass(frozen=True)
class RegistrationSettings:
    """The knobs of :func:`register`; recorded with every registration.

    Args:
        bins: histogram bins of Mattes mutual information.
        samples: fixed-image voxels sampled (at random, with the seed) per level, at
            most; a fixed number keeps the time per iteration independent of the size.
        shrink_factors, smoothing_sigmas: the pyramid, coarse to fine (sigmas in voxels).
        learning_rate, min_step: regular-step gradient descent, in mm-like units (scales
            from physical shift).
        iterations: most iterations per level.
        initializer: ``scanner`` (the images as the scanner placed them: no initial shift,
            rotation about the fixed image's or the mask's centre), ``geometry`` (image
            centres aligned) or ``moments`` (centres of mass aligned).
        threads: threads of the registration. With more than one, the metric's sums are
            split differently from run to run and results differ in the last digits; one
            thread gives identical results every time, on every machine.
    """

    bins: int = 32
    samples: int = 50_000
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas: tuple[float, ...] = (2.0, 1.0, 0.0)
    learning_rate: float = 2.0
    min_step: float = 1e-3
    iterations: int = 200
    initializer: str = "scanner"
    threads: int = 1

    def validate(self) -> "RegistrationSettings":
        if self.samples < 1000:
            raise UsageError(
                f"samples must be at least 1000, got {self.samples}",
                fix="change that RegistrationSettings field, or keep its default",
            )
        if len(self.shrink_factors) != len(self.smoothing_sigmas):
            raise UsageError(
                "shrink_factors and smoothing_sigmas must have the same length",
                fix="give one smoothing sigma per shrink factor (one per pyramid level)",
            )
        if self.initializer not in ("scanner", "geometry", "moments"):
            raise UsageError(
                f"initializer {self.initializer!r} is not one of scanner, geometry, moments",
                fix="use scanner (the default: the scanner's positions)",
            )
        if self.threads < 1 or self.iterations < 1 or self.bins < 4:
            raise UsageError(
                "threads and iterations must be >= 1 and bins >= 4",
                fix="change that RegistrationSettings field, or keep its default",
            )
        return self


# ============================================================================ transforms
def affine_parts(transform) -> tuple[np.ndarray, np.ndarray]:
    """(3x3 matrix, offset) of a linear SimpleITK transform: T(p) = matrix @ p + offset.

    Raises :class:`UsageError` when the transform is not linear (a deformable one).
    """
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)), float)
    matrix = np.column_stack(
        [np.asarray(transform.TransformPoint(tuple(e)), float) - origin for e in np.eye(3)]
    )
    probes = np.array([[37.0, -81.0, 123.0], [-250.0, 170.0, -60.0], [11.0, 300.0, 290.0]])
    for probe in probes:
        mapped = np.asarray(transform.TransformPoint(tuple(probe)), float)
        if np.linalg.norm(mapped - (matrix @ probe + origin)) > 1e-6 * (1 + np.abs(probe).max()):
            raise UsageError(
                f"the transform ({transform.GetName()}) is not rigid or affine",
                fix="give a rigid or affine transform (metcli does no deformable registration)",
            )
    return matrix, origin


def _build(name: str, parameters, fixed_parameters):
    import SimpleITK as sitk

    if name not in TRANSFORM_CLASSES.values():
        raise InputError(
            f"transform class {name!r} is not one of {', '.join(TRANSFORM_CLASSES.values())}",
            fix="record a rigid (Euler3DTransform) or affine (AffineTransform) transform",
        )
    transform = sitk.AffineTransform(3) if name == "AffineTransform" else sitk.Euler3DTransform()
    transform.SetFixedParameters([float(p) for p in fixed_parameters])
    transform.SetParameters([float(p) for p in parameters])
    return transform


@dataclass(frozen=True)
class Registration:
    """A rigid or affine transform from the reference (fixed) to a channel (moving).

    ``parameters`` and ``fixed_parameters`` are SimpleITK's, for ``transform_name``
    (``Euler3DTransform``: angles in radians, then translation in mm; fixed parameters: the
    centre of rotation; ``AffineTransform``: the 3x3 matrix row by row, then translation).
    ``metric_value`` (Mattes mutual information, lower is better), ``iterations`` and
    ``stop_condition`` describe the optimisation; ``source`` names a transform file read
    by :func:`read_transform`.
    """

    kind: str
    transform_name: str
    parameters: tuple[float, ...]
    fixed_parameters: tuple[float, ...]
    metric_value: float | None = None
    iterations: int = 0
    stop_condition: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    @property
    def transform(self):
        """A new SimpleITK transform with these parameters."""
        return _build(self.transform_name, self.parameters, self.fixed_parameters)

    def transform_points(self, points) -> np.ndarray:
        """Map physical points (N x 3, mm) from the reference to the channel."""
        matrix, offset = affine_parts(self.transform)
        return np.asarray(points, float) @ matrix.T + offset

    def as_record(self) -> dict[str, Any]:
        """A JSON-able dict for provenance; :meth:`from_record` rebuilds the registration."""
        matrix, offset = affine_parts(self.transform)
        record: dict[str, Any] = {
            "kind": self.kind,
            "maps": MAPS,
            "transform": {
                "class": self.transform_name,
                "parameters": [float(p) for p in self.parameters],
                "fixed_parameters": [float(p) for p in self.fixed_parameters],
            },
            "matrix": matrix.tolist(),
            "offset_mm": offset.tolist(),
        }
        if self.transform_name == "Euler3DTransform":
            record["rotation_deg"] = [math.degrees(a) for a in self.parameters[:3]]
            record["rotation_order"] = EULER_ORDER
            record["translation_mm"] = [float(t) for t in self.parameters[3:]]
            record["centre_mm"] = [float(c) for c in self.fixed_parameters[:3]]
        record["metric"] = {"name": "MattesMutualInformation", "value": self.metric_value}
        record["iterations"] = int(self.iterations)
        record["stop_condition"] = self.stop_condition
        record["settings"] = dict(self.settings)
        record["source"] = self.source
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Registration":
        """The registration that :meth:`as_record` wrote (for example read from a sidecar)."""
        try:
            spec = record["transform"]
            registration = cls(
                kind=str(record["kind"]),
                transform_name=str(spec["class"]),
                parameters=tuple(float(p) for p in spec["parameters"]),
                fixed_parameters=tuple(float(p) for p in spec["fixed_parameters"]),
                metric_value=(record.get("metric") or {}).get("value"),
                iterations=int(record.get("iterations", 0)),
                stop_condition=str(record.get("stop_condition", "")),
                settings=dict(record.get("settings") or {}),
                source=record.get("source"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(
                f"the transform record is incomplete or malformed ({exc!r})",
                fix="give the 'registration' record that metcli wrote, unchanged",
            ) from None
        registration.transform  # noqa: B018 - checks the class and the number of parameters
        return registration

    @classmethod
    def from_transform(cls, transform, *, source: str | None = None) -> "Registration":
        """A registration from any linear SimpleITK transform (composite ones included):
        rigid (an ``Euler3DTransform``) when its matrix is a rotation, else affine."""
        import SimpleITK as sitk

        matrix, offset = affine_parts(transform)
        is_rotation = np.allclose(matrix.T @ matrix, np.eye(3), atol=1e-6) and (
            np.linalg.det(matrix) > 0
        )
        if is_rotation:
            linear = sitk.Euler3DTransform()
            linear.SetMatrix(tuple(matrix.ravel()), 1e-5)
        else:
            linear = sitk.AffineTransform(3)
            linear.SetMatrix(tuple(matrix.ravel()))
        linear.SetTranslation(tuple(offset))
        return cls(
            kind="rigid" if is_rotation else "affine",
            transform_name=linear.GetName(),
            parameters=tuple(linear.GetParameters()),
            fixed_parameters=tuple(linear.GetFixedParameters()),
            stop_condition="supplied",
            source=source,
        )


def read_transform(path: str | Path) -> Registration:
    """A transform file written by SimpleITK or ITK (``.tfm``, ``.txt``, ``.h5``), as a
    :class:`Registration` (it must map reference points to channel points)."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise InputError(
            "the transform file does not exist", path=path, fix="check the path to the .tfm file"
        )
    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise InputError(
            f"cannot read the transform file ({first})",
            path=path,
            fix="write it with SimpleITK/ITK (sitk.WriteTransform) as .tfm, .txt or .h5; "
            'for elastix, set (ITKTransformOutputFileNameExtension "tfm")',
        ) from None
    if transform.GetDimension() != 3:
        raise InputError(
            f"the transform is {transform.GetDimension()}D; 3D is needed",
            path=path,
            fix="give the 3D transform between the two volumes",
        )
    try:
        return Registration.from_transform(transform, source=path.name)
    except UsageError as exc:
        raise InputError(exc.what, path=path, fix=exc.fix) from None


# ============================================================================ registration
def _float_image(image, what: str):
    import SimpleITK as sitk

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageError(
            f"the {what} image for registration must be a 3D scalar image",
            fix="give one 3D volume per channel",
        )
    return sitk.Cast(image, sitk.sitkFloat32)


def _mask_image(mask, fixed, fixed_path):
    """The fixed-image mask as a SimpleITK uint8 image on the fixed grid."""
    import SimpleITK as sitk

    if mask is None:
        return None
    if isinstance(mask, np.ndarray):
        if mask.shape != fixed.GetSize()[::-1]:
            raise GeometryError(
                f"the registration mask ({mask.shape}) is not on the grid of the fixed image "
                f"{fixed_path or ''} ({fixed.GetSize()[::-1]}, z-y-x)",
                fix="give a mask on the reference channel's grid",
            )
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.CopyInformation(fixed)
    else:
        image = to_reference_grid(
            sitk.Cast(mask > 0, sitk.sitkUInt8),
            fixed,
            image_path="the registration mask",
            reference_path=fixed_path,
        )
    if not np.any(sitk.GetArrayViewFromImage(image)):
        raise UsageError("the registration mask is empty", fix="give a mask with voxels in it")
    return image


def _initial_transform(kind: str, fixed, moving, mask, initializer: str):
    import SimpleITK as sitk

    transform = sitk.Euler3DTransform() if kind == "rigid" else sitk.AffineTransform(3)
    if initializer != "scanner":
        how = getattr(sitk.CenteredTransformInitializerFilter, initializer.upper())
        return sitk.CenteredTransformInitializer(fixed, moving, transform, how)
    if mask is not None:
        stats = sitk.LabelShapeStatisticsImageFilter()
        stats.Execute(mask)
        centre = stats.GetCentroid(1)
    else:
        corner = np.asarray(fixed.GetSize(), float) - 1
        centre = fixed.TransformContinuousIndexToPhysicalPoint(tuple(corner / 2))
    transform.SetCenter(tuple(float(c) for c in centre))
    return transform


def _sampling_per_level(settings: RegistrationSettings, fixed) -> list[float]:
    """The fraction of each pyramid level's voxels that gives ``settings.samples``."""
    fractions = []
    for factor in settings.shrink_factors:
        voxels = float(np.prod([max(1, n // factor) for n in fixed.GetSize()]))
        fractions.append(min(1.0, settings.samples / voxels))
    return fractions


def _method(settings: RegistrationSettings, seed: int, fixed, mask):
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    # SimpleITK reads a seed of 0 as "the wall clock": seed s is passed as s + 1.
    method.SetMetricSamplingPercentagePerLevel(_sampling_per_level(settings, fixed), int(seed) + 1)
    if mask is not None:
        method.SetMetricFixedMask(mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=settings.learning_rate,
        minStep=settings.min_step,
        numberOfIterations=settings.iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(settings.shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(settings.smoothing_sigmas))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetNumberOfThreads(settings.threads)
    return method


@dataclass
class _Stage:
    transform: Any
    metric_value: float
    iterations: int
    stop_condition: str


def _run_stage(kind, fixed, moving, mask, settings, seed, initial, paths) -> _Stage:
    """One optimisation (rigid or affine) from ``initial``."""
    import SimpleITK as sitk

    method = _method(settings, seed, fixed, mask)
    method.SetInitialTransform(initial, inPlace=False)
    iterations = [0]
    method.AddCommand(sitk.sitkIterationEvent, lambda: iterations.__setitem__(0, iterations[0] + 1))
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    try:
        # The metric's threads follow the global default, not the method's own setting.
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(settings.threads)
        result = method.Execute(fixed, moving)
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else "failed"
        raise GeometryError(
            f"cannot register {paths[0] or 'the channel'} to {paths[1] or 'the reference'}"
            f" ({detail})",
            path=paths[0],
            fix="check that both images show the same region (their physical positions), or "
            "supply a transform yourself",
        ) from None
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    if result.GetName() == "CompositeTransform":
        result = sitk.CompositeTransform(result).GetBackTransform()
    linear = sitk.Euler3DTransform(result) if kind == "rigid" else sitk.AffineTransform(result)
    return _Stage(
        linear,
        float(method.GetMetricValue()),
        iterations[0],
        method.GetOptimizerStopConditionDescription(),
    )


def register(
    moving,
    fixed,
    *,
    kind: str = "rigid",
    mask=None,
    seed: int = 0,
    settings: RegistrationSettings | None = None,
    moving_path: str | Path | None = None,
    fixed_path: str | Path | None = None,
) -> Registration:
    """Register ``moving`` (a channel) to ``fixed`` (the reference channel).

    Args:
        moving, fixed: 3D SimpleITK images, on any grids; intensities may differ.
        kind: ``rigid`` (rotation + translation) or ``affine`` (a rigid stage, then an affine
            one started from it).
        mask: optional fixed-image mask (a SimpleITK image or a [z, y, x] array on the fixed
            grid), for example the liver dilated by a few cm: only it drives the metric.
        seed: seed of the metric's random sampling.
        settings: :class:`RegistrationSettings` (defaults when None).
        moving_path, fixed_path: the files, for messages.

    Returns a :class:`Registration` mapping fixed points to moving points.
    """
    import SimpleITK as sitk

    if kind not in KINDS:
        raise UsageError(
            f"registration kind {kind!r} is not one of {', '.join(KINDS)}",
            fix="use rigid (the default) or affine",
        )
    if not 0 <= int(seed) < 2**32 - 1:
        raise UsageError(
            f"the registration seed must be in [0, 2**32 - 2], got {seed}",
            fix="give a seed in that range",
        )
    settings = (settings or RegistrationSettings()).validate()
    fixed_f = _float_image(fixed, "fixed")
    moving_f = _float_image(moving, "moving")
    mask_image = _mask_image(mask, fixed_f, fixed_path)
    paths = (moving_path, fixed_path)
    initial = _initial_transform("rigid", fixed_f, moving_f, mask_image, settings.initializer)
    stages = [_run_stage("rigid", fixed_f, moving_f, mask_image, settings, seed, initial, paths)]
    if kind == "affine":
        rigid = stages[0].transform
        initial = sitk.AffineTransform(3)
        initial.SetCenter(rigid.GetCenter())
        initial.SetMatrix(rigid.GetMatrix())
        initial.SetTranslation(rigid.GetTranslation())
        stages.append(
            _run_stage("affine", fixed_f, moving_f, mask_image, settings, seed, initial, paths)
        )
    final = stages[-1]
    registration = Registration(
        kind=kind,
        transform_name=TRANSFORM_CLASSES[kind],
        parameters=tuple(float(p) for p in final.transform.GetParameters()),
        fixed_parameters=tuple(float(p) for p in final.transform.GetFixedParameters()),
        metric_value=final.metric_value,
        iterations=sum(stage.iterations for stage in stages),
        stop_condition=final.stop_condition,
        settings={
            **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()},
            "seed": int(seed),
            "mask": mask_image is not None,
            "stages": ["rigid", "affine"][: len(stages)],
        },
    )
    log.debug(
        "registered %s (%s): metric %.4g after %d iterations",
        moving_path or "channel",
        kind,
        registration.metric_value,
        registration.iterations,
    )
    return registration
