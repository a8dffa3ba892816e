"""pyradiomics parameter files: presets, validation, the resolved settings and their hash.

``metcli extract`` reads pyradiomics' own parameter format (YAML or JSON with
the top-level keys ``setting``, ``imageType``, ``featureClass``), so a file
made for pyradiomics works as it is and the other way round. Every file is
checked before use against **pyradiomics' own parameter schema**
(``radiomics/schemas/paramSchema.yaml`` with its ``schemaFuncs.py``, checked
with pykwalify as pyradiomics does): a misspelt setting, an unknown feature
class or feature, or a value of the wrong type is a one-line error naming the
key and the file, never a setting that is silently ignored.

On top of the schema, metcli refuses what its per-lesion extraction cannot do
exactly (see ``docs/extract.md``):

* image types other than ``Original``: filters (LoG, Wavelet, Square...) look
  at the image around and beyond the lesion (whole-image maxima, wavelet
  alignment, filter support), so cropping around each lesion would change
  them;
* ``voxelSetting`` (voxel-based feature maps): metcli extracts one value per
  lesion.

Presets ship with the package (``metcli/radiomics/presets/<name>.yaml``): ``study``,
``recommended`` and ``ibsi``. :func:`load_params` takes a preset name or a
file; :func:`params_from_dict` a mapping (a Python user's parameters).

The **resolved settings** (:attr:`ExtractionParams.settings`) are pyradiomics'
defaults, overlaid with the file's settings, with two values metcli sets
itself: ``label`` (metcli builds one binary mask per lesion, value 1) and
``additionalInfo`` (false: metcli writes its own diagnostics columns).
Numbers are normalised to the type pyradiomics' schema declares (``binWidth:
25`` and ``binWidth: 25.0`` resolve, and hash, the same). The enabled feature
classes resolve to explicit, sorted feature lists. The sha256 of the resolved
parameters identifies how features were made.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import logging
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Mapping

from metcli.core.errors import UsageError
from metcli.io.files import sha256_json

log = logging.getLogger(__name__)

#: Presets that ship with metcli (``metcli/radiomics/presets/<name>.yaml``).
PRESETS = ("study", "recommended", "ibsi")
DEFAULT_PRESET = "study"

#: Image types metcli can extract per lesion (see the module docstring).
SUPPORTED_IMAGE_TYPES = ("Original",)
#: Feature classes that describe the shape of the mask only.
SHAPE_CLASSES = ("shape", "shape2D")

#: Class-level defaults of pyradiomics that its extractor does not list in its
#: own defaults; recorded so that the resolved settings say what was used.
_CLASS_DEFAULTS = {
    "voxelArrayShift": 0,
    "symmetricalGLCM": True,
    "weightingNorm": None,
    "gldm_a": 0,
    "resegmentMode": "absolute",
    "resegmentShape": False,
}
#: Settings metcli chooses itself, whatever the file says.
_METCLI_SETTINGS = {"label": 1, "additionalInfo": False}
#: Order of the feature classes in tables when the file does not order them.
CLASS_ORDER = ("shape", "shape2D", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")


@dataclass(frozen=True)
class ExtractionParams:
    """Validated, resolved pyradiomics parameters.

    Attributes:
        settings: every pyradiomics setting with its value (defaults included).
        image_types: ``{"Original": {custom settings}}``.
        feature_classes: ``{class: [feature names]}`` in table order, the
            names explicit and sorted (deprecated features only when named).
        source: ``preset:<name>``, ``file:<file name>`` or ``dict`` (not part
            of the hash: the same parameters from two places are the same).
        pyradiomics_version: the version that resolved them.
    """

    settings: dict
    image_types: dict
    feature_classes: dict
    source: str = "dict"
    pyradiomics_version: str = ""
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    def as_dict(self) -> dict:
        """The resolved parameters in pyradiomics' file layout."""
        return {
            "setting": copy.deepcopy(self.settings),
            "imageType": copy.deepcopy(self.image_types),
            "featureClass": copy.deepcopy(self.feature_classes),
        }

    @property
    def sha256(self) -> str:
        """Hash of the resolved parameters (independent of key order and source)."""
        return sha256_json(self.as_dict())

    @property
    def resamples(self) -> bool:
        """Whether pyradiomics resamples (``interpolator`` and ``resampledPixelSpacing``)."""
        return (
            self.settings.get("interpolator") is not None
            and self.settings.get("resampledPixelSpacing") is not None
        )

    @property
    def resegments(self) -> bool:
        return self.settings.get("resegmentRange") is not None

    @property
    def texture_classes(self) -> list[str]:
        """Enabled classes that depend on grey levels (all but the shape classes)."""
        return [c for c in self.feature_classes if c not in SHAPE_CLASSES]


# ----------------------------------------------------------------------------- loading
def load_params(spec: str | Path | None = None) -> ExtractionParams:
    """Parameters from a preset name or a YAML/JSON file, validated and resolved.

    ``spec`` is a preset name (``study``, ``recommended``, ``ibsi``), or the
    path of a pyradiomics parameter file; None gives the default preset. An
    existing file wins over a preset of the same name.

    Raises:
        UsageError: neither a file nor a preset; unreadable YAML; a setting,
            class, feature or image type the schema or metcli refuses (the
            message names the key and the file).
    """
    if spec is None:
        spec = DEFAULT_PRESET
    path = Path(spec)
    if path.is_file():
        text = _read_text(path)
        data = _parse_yaml(text, where=path)
        return params_from_dict(data, where=path, source=f"file:{path.name}")
    if str(spec) in PRESETS:
        text = preset_text(str(spec))
        data = _parse_yaml(text, where=f"preset {spec}")
        return params_from_dict(data, where=f"preset {spec}", source=f"preset:{spec}")
    raise UsageError(
        f"--params {str(spec)!r} is neither a file nor a preset",
        fix=f"give a pyradiomics parameter file (YAML) or one of the presets {', '.join(PRESETS)}",
    )


def preset_text(name: str) -> str:
    """The YAML text of a preset shipped with metcli."""
    if name not in PRESETS:
        raise UsageError(f"no preset named {name!r}", fix=f"choose one of {', '.join(PRESETS)}")
    presets = resources.files("metcli.radiomics").joinpath("presets")
    return presets.joinpath(f"{name}.yaml").read_text("utf-8")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"cannot read the parameter file ({exc})",
            path=path,
            fix="give a readable UTF-8 YAML or JSON file",
        ) from None


def _parse_yaml(text: str, *, where) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid syntax"
        raise UsageError(
            f"not valid YAML{at}: {problem}",
            path=where,
            fix="correct the YAML syntax (indentation, colons, brackets)",
        ) from None


def params_from_dict(
    data: Any, *, where: str | Path = "parameters", source: str = "dict"
) -> ExtractionParams:
    """Validate a pyradiomics parameter mapping and resolve it (see the module docstring)."""
    import radiomics

    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise UsageError(
            f"must hold a mapping with the keys setting, imageType, featureClass "
            f"(found {type(data).__name__})",
            path=where,
            fix="write a pyradiomics parameter file",
        )
    data = copy.deepcopy(dict(data))
    _validate_with_pyradiomics_schema(data, where)
    if data.get("voxelSetting"):
        raise UsageError(
            "voxelSetting (voxel-based feature maps) is not supported: metcli "
            "extracts one value per lesion",
            path=where,
            fix="remove the voxelSetting section",
        )
    image_types = dict(data.get("imageType") or {"Original": {}})
    for name in image_types:
        if name not in SUPPORTED_IMAGE_TYPES:
            raise UsageError(
                f"image type {name!r} is not supported: metcli extracts each lesion "
                "from a crop around it, which would change filtered images "
                "(they depend on voxels beyond the lesion)",
                path=where,
                fix="enable only 'Original' under imageType",
            )
    image_types = {name: _canonical_settings(image_types[name] or {}) for name in image_types}
    settings = resolved_settings(data.get("setting") or {})
    classes = _resolve_classes(data.get("featureClass"), where)
    return ExtractionParams(
        settings=settings,
        image_types=image_types,
        feature_classes=classes,
        source=source,
        pyradiomics_version=str(radiomics.__version__),
        raw=data,
    )


def resolved_settings(given: Mapping[str, Any]) -> dict:
    """pyradiomics' defaults, overlaid with ``given`` and metcli's own two settings."""
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    settings = dict(RadiomicsFeatureExtractor().settings)  # pyradiomics' extractor defaults
    settings.update(_CLASS_DEFAULTS)
    given = _canonical_settings(given)
    if given.get("binCount") is None:
        settings["binWidth"] = 25.0  # pyradiomics' default bin width (imageoperations)
    settings.update(given)
    settings.update(_METCLI_SETTINGS)
    if settings.get("resegmentRange") is None:
        settings.pop("resegmentMode", None)
        settings.pop("resegmentShape", None)
    return _canonical_settings(settings)


def _resolve_classes(given: Mapping | None, where) -> dict[str, list[str]]:
    from radiomics import getFeatureClasses

    available = getFeatureClasses()
    if not given:
        # pyradiomics' default: every class but shape2D, every non-deprecated feature
        given = {name: None for name in available if name != "shape2D"}
    ordered = sorted(
        given,
        key=lambda c: (
            CLASS_ORDER.index(c) if c in CLASS_ORDER else len(CLASS_ORDER) + list(given).index(c)
        ),
    )
    resolved = {}
    for name in ordered:
        names = available[name].getFeatureNames()  # {feature: deprecated?}
        wanted = given[name]
        if wanted:
            chosen = sorted(set(wanted))
        else:
            chosen = sorted(f for f, deprecated in names.items() if not deprecated)
        if not chosen:
            raise UsageError(
                f"feature class {name!r} enables no feature",
                path=where,
                fix="list its features, or leave the list empty for all",
            )
        resolved[name] = chosen
    return resolved


# ----------------------------------------------------------------------------- schema
@functools.lru_cache(maxsize=None)
def _schema_files() -> tuple[str, str]:
    from radiomics import getParameterValidationFiles

    schema, funcs = getParameterValidationFiles()
    return str(schema), str(funcs)


@functools.lru_cache(maxsize=None)
def setting_types() -> dict[str, Any]:
    """``{setting: schema type}`` from pyradiomics' parameter schema (``seq`` -> [type])."""
    import yaml

    schema = yaml.safe_load(Path(_schema_files()[0]).read_text(encoding="utf-8"))
    mapping = schema["mapping"]["setting"]["mapping"]
    types = {}
    for key, rule in mapping.items():
        if "seq" in rule:
            types[key] = [rule["seq"][0].get("type", "any")]
        else:
            types[key] = rule.get("type", "any")
    return types


def known_settings() -> list[str]:
    return sorted(setting_types())


def _canonical_settings(values: Mapping[str, Any]) -> dict:
    """Numbers as the schema's declared type (float settings as floats)."""
    types = setting_types()
    out = {}
    for key, value in values.items():
        kind = types.get(key)
        if isinstance(kind, list) and isinstance(value, (list, tuple)):
            value = [_as_type(v, kind[0]) for v in value]
        elif isinstance(kind, str):
            value = _as_type(value, kind)
        out[key] = value
    return out


def _as_type(value, kind: str):
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


@contextlib.contextmanager
def _quiet_pykwalify() -> Iterator[None]:
    """pykwalify logs every problem at ERROR level; metcli reports them itself."""
    importlib.import_module("pykwalify.core")  # creates its loggers

    names = [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] == "pykwalify"]
    loggers = [logging.getLogger(n) for n in names]
    before = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    try:
        with warnings.catch_warnings():
            # pykwalify loads pyradiomics' schemaFuncs with a deprecated importlib call
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for lg, state in zip(loggers, before):
            lg.disabled = state


def _validate_with_pyradiomics_schema(data: dict, where) -> None:
    import pykwalify.core
    import pykwalify.errors

    top = [k for k in data if k not in ("setting", "imageType", "featureClass", "voxelSetting")]
    if top:
        raise UsageError(
            f"unknown top-level key {top[0]!r} (pyradiomics parameter files have "
            "setting, imageType, featureClass and voxelSetting)",
            path=where,
            fix=f"correct or remove {top[0]!r}",
        )
    schema, funcs = _schema_files()
    with _quiet_pykwalify():
        try:
            core = pykwalify.core.Core(source_data=data, schema_files=[schema], extensions=[funcs])
            core.validate(raise_exception=False)
        except (ValueError, TypeError, pykwalify.errors.PyKwalifyException) as exc:
            # schemaFuncs (feature classes, image types, interpolator...) raise directly
            message = getattr(exc, "msg", None) or str(exc)
            raise UsageError(
                f"does not follow pyradiomics' parameter schema: {_one_line(message)}",
                path=where,
                fix="use the names pyradiomics documents (case-sensitive)",
            ) from None
    errors = [str(e) for e in (core.validation_errors or [])]
    if errors:
        raise UsageError(
            _describe_schema_error(errors[0], len(errors)), path=where, fix=_fix_for(errors[0])
        )


def _describe_schema_error(error: str, count: int) -> str:
    import re

    more = f" (and {count - 1} more problem(s))" if count > 1 else ""
    unknown = re.match(r"Key '(.+?)' was not defined\. Path: '(.*)'", error)
    if unknown:
        key, path = unknown.groups()
        section = path.strip("/") or "top level"
        return f"unknown setting {key!r} in {section} (pyradiomics parameter schema){more}"
    return f"does not follow pyradiomics' parameter schema: {_one_line(error)}{more}"


def _fix_for(error: str) -> str:
    import difflib
    import re

    unknown = re.match(r"Key '(.+?)' was not defined", error)
    if unknown:
        close = difflib.get_close_matches(unknown.group(1), known_settings(), n=1)
        if close:
            return f"did you mean {close[0]!r}? Settings are case-sensitive"
        return "remove it, or use one of pyradiomics' documented settings"
    return "correct the value (see pyradiomics' documentation of the setting)"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
