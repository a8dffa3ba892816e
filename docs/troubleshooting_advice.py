"""The hand-kept part of docs/troubleshooting.md; ``make_troubleshooting.py`` reads it.

``INTRO`` opens the page. ``ADVICE`` says what to do about a message that carries no
``fix=`` of its own, keyed by ``<module>:<function>:<first words>`` as the generator
prints it (``no fix and no advice: KEY``). Better still, give the error a ``fix=`` in the
library and drop its entry here: ``tests/test_troubleshooting.py`` fails on an entry that
no message uses any more.
"""

INTRO = """
# Troubleshooting

Every error message metcli can print, with what it means and what to do. The tables
below are generated from the source by `docs/make_troubleshooting.py` (do not edit
them by hand; run `python docs/make_troubleshooting.py` after changing a message).

## Reading an error line

An error is one line on stderr:

    metcli: error: <file or folder>: <what is wrong>. Fix: <what to do>.

- The path comes first when the error is about one file or folder (shown as `<path>`
  in the tables below). Other values that vary are shown as `<name>`, named after the
  variable that holds them.
- `Fix:` is the library's own advice. Where a message has none, the "what to do" column
  below gives advice kept with this page (marked †).
- Usage errors found by click itself (a missing argument, an unknown option, a path
  that does not exist, a value that is not a number) print the command's usage and
  `Error: ...`, and exit 2. A `--config` file's problems look the same
  (`Invalid value for '--config': ...`).
- `--debug` prints the Python traceback with the line. Anything that is not a
  metcli error is printed as `unexpected <Type>: <text> (run again with --debug for the
  traceback and report it)`: that is a bug, please report it with the traceback.

## Exit codes

{exit_codes}

Batch commands (`segment`, `split-lesions`, `extract`, `predict`, `evaluate-seg`, ...) go on
past a failing participant: the message of each failure is shown in the table of
failures, and the run ends with `<n> of <m> participant(s) failed` (exit 3), or
`all <m> participant(s) failed` (exit 1). Fix those inputs and run the same command
again: finished outputs are skipped.

## Where the logs go

metcli writes to the folders it is given, to `TMPDIR`, and nothing else. Errors, warnings
and progress go to stderr (results and tables to stdout): `-v` adds information, `-vv`
(or `--debug`) debugging output, `-q` keeps errors only, `--no-progress` hides the
progress bars. There is no log file: redirect stderr (`2> run.log`) to keep one. Under
SLURM, `containers/slurm/submit.sh` writes each task's stderr to
`OUT_DIR/logs/participant-<job>_<task>.log` and the group job's to
`OUT_DIR/logs/group-<job>.log`. Each output's JSON sidecar records the settings and
inputs it was made from.

## The most common problems

{common}
"""


def _table(header: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    return "\n".join(lines + [f"| {a} | {b} |" for a, b in rows])


EXIT_CODES = [
    ("0", "success"),
    ("1", "error: nothing was done (every participant failed, or the command stopped first)"),
    ("2", "usage error: an option, an argument or a `--config` value is wrong"),
    (
        "3",
        "some participants failed and the others are done (a table on stderr lists the "
        "failures), or the group-level step (a cohort table) failed after participants "
        "finished: their outputs are kept and the same command run again skips them",
    ),
    (
        "130",
        "interrupted (Ctrl-C, or the job was cancelled): "
        "`interrupted; outputs not finished were not written`",
    ),
]
COMMON = [
    (
        "`cannot read the image: the file is truncated` / `corrupted`",
        "copy or export the file again; it was cut short (an interrupted copy, a full disk)",
    ),
    (
        "`do not describe the same physical grid`",
        "give a mask made on this CT; metcli never resamples a mask silently",
    ),
    (
        "`the segmentation holds label(s) 3, 7 besides background (0), liver (1) and lesion (2)`",
        "`--lesion-label`/`--liver-label`, or `metcli import-mask ... --label-map`",
    ),
    (
        "`no CT of phase(s) ... for sub-...` / `no lesion map for sub-...`",
        "add the file, or leave the participant out with `--participant-label`",
    ),
    (
        "`model 'NAME' is not installed` / `failed its sha256 check`",
        "`metcli weights fetch NAME` (again)",
    ),
    (
        "`the card does not describe model.onnx` / `the card was changed after metcli wrote it`",
        "copy the model folder again; never edit `model.json`",
    ),
    (
        "`the features were extracted with other settings than model ... was trained on`",
        "extract again with the settings in the model's card",
    ),
    (
        "`no space left on its device` (and the other faults below)",
        "free space or give another output folder; finished outputs are kept",
    ),
    (
        "`<n> of <m> participant(s) failed` (exit 3)",
        "fix the inputs listed in the table and run the same command again",
    ),
]
INTRO = INTRO.format(
    exit_codes=_table(("code", "meaning"), EXIT_CODES),
    common=_table(("message (abridged)", "what to do"), COMMON),
)

_SEE_OPTION = "correct the option (see the command's --help)"
_CHOICES = "give one of the values the message lists (see the command's --help)"
_LIBRARY = (
    "a keyword argument of the library function was out of range; the command line checks "
    "its own options first, so from a command this is a bug: report it"
)
_FORWARDED = "follow the advice printed with it: it comes from the underlying error"
_ALMSS_KNOB = (
    "correct that option or knob of `synth --scenario almss`: docs/synth.md lists the "
    "classes, the knobs and their ranges"
)
_SYNTH_SIZE = "use --size small or paper, or a grid whose phases share their in-plane size"
_RENAME = (
    "rename the file to sub-<id>[_ses-<s>][_ce-<phase>][_desc-<d>]_<suffix><ext>, labels "
    "of letters and digits only (docs/architecture.md, Data conventions)"
)

ADVICE: dict[str, str] = {
    "cli/_common.py:_load_config:cannot read it as YAML": (
        "correct the file at the line and column given "
        "(YAML or JSON: 'option-name: value' per line)"
    ),
    "cli/_common.py:_load_config:must hold a mapping of": (
        "write one 'option-name: value' per line at the top level of the file"
    ),
    "cli/_common.py:_load_config:unknown option ... for '...'": (
        "use only the option names the message lists as known for this command (without '--')"
    ),
    "cli/evaluate_seg.py:_dice_edges:... is not a comma-separated": (
        "give --dice-bands as increasing numbers between 0 and 1, for example 0.5,0.7,0.9"
    ),
    "cli/train_cnn.py:_window:... is not WIDTH,LEVEL (for": (
        "give --window as two numbers, width then level in HU, for example 330,10"
    ),
    "cnn/data.py:assign_folds:--cv-folds must be at least": "give --cv-folds 2 or more",
    "cnn/fit.py:Monitor.__init__:--monitor must be one of": _CHOICES,
    "cnn/options.py:check_options:--dims must be 2 or": "give --dims 2 (lesion slices) or 3",
    "cnn/options.py:check_options:... must be at least": "give 1 or more",
    "cnn/options.py:check_options:--lr must be positive, got": "give --lr above 0, e.g. 1e-4",
    "cnn/options.py:check_options:--monitor must be one of": _CHOICES,
    "cnn/options.py:check_options:--patience must be at least": "give --patience 1 or more",
    "cnn/options.py:check_options:--cv-folds must be at least": "give --cv-folds 2 or more",
    "cnn/options.py:check_options:--test-patients must be 0 or": "give --test-patients 0 or more",
    "cnn/options.py:check_options:--device must be auto, cpu": _CHOICES,
    "cnn/options.py:resolve_options:give --test-patients or --split, not": (
        "leave out --test-patients: the split file already names the test patients"
    ),
    "core/devices.py:check_device:--device ... is not one": _CHOICES,
    "evaluation/evaluate.py:_check_arguments:--level ... is not one": _CHOICES,
    "evaluation/evaluate.py:_check_arguments:--set ... is not one": _CHOICES,
    "evaluation/evaluate.py:_check_arguments:confidence level ... must lie": (
        "give confidence_level between 0.5 and 1, for example 0.95"
    ),
    "evaluation/evaluate.py:_check_arguments:--overlay-lesions must be 1 or": (
        "give --overlay-lesions 1 or more"
    ),
    "evaluation/evaluate_seg.py:_group_settings:confidence level ... must lie": (
        "give confidence_level between 0.5 and 1, for example 0.95"
    ),
    "evaluation/seg_summaries.py:check_dice_edges:--dice-bands must be numbers, got": (
        "give --dice-bands as numbers between 0 and 1, for example 0.5,0.7,0.9"
    ),
    "imaging/dicom/volume.py:_series_from:series_uid ... does not name": (
        "give the SeriesInstanceUID of the files given, or leave series_uid out"
    ),
    "imaging/dicom/writer.py:_stored_pixels:ct_to_dicom_series writes axial images with": (
        "give an image with the identity direction (axial, as metcli synth writes them)"
    ),
    "imaging/dicom/writer.py:_stored_pixels:CT values must lie in": (
        "clip the image to the HU range the message gives before writing it as DICOM"
    ),
    "imaging/geometry.py:place_on_grid:the segmentation volume is ...D;": (
        "give a 3D segmentation (one volume, not a single slice or a time series)"
    ),
    "imaging/import_mask.py:_check_inputs:slice tolerance ... must lie": (
        "give slice_tolerance above 0 and at most 0.5 slice spacings"
    ),
    "imaging/import_mask.py:_convert_mask:unknown mask format ...": (
        "give mask_format rtstruct, seg, nrrd or nifti, or leave it out to detect it"
    ),
    "io/bids.py:Entities.__post_init__:entity ...-... is not a": (
        "use labels of letters and digits only (participant, session, phase)"
    ),
    "io/bids.py:Entities.__post_init__:suffix ... is not valid": "use letters and digits only",
    "io/bids.py:Entities.__post_init__:extension ... is not one": (
        "use one of the extensions the message lists"
    ),
    "io/bids.py:clean_label:... must be text, got": "give the label as text, for example '001'",
    "io/bids.py:parse_name:InputError(f'{base!r} {exc.what}', path=name, fix=exc.fix)": _RENAME,
    "io/bids.py:resolve_levels:--level ... is not one": _CHOICES,
    "io/bids.py:split_extension:file name ... has none": (
        "give a file with one of the extensions the message lists (images: .nii.gz or .nii)"
    ),
    "io/oserrors.py:output_error:OutputError(what, path=folder, fix=fix)": (
        "see Operating-system faults while writing outputs, below"
    ),
    "io/schemas.py:load_schema:no schema named ... ships": (
        "reinstall metcli (its schemas are missing), or report it"
    ),
    "io/weights.py:_download_source:model ... is in the": (
        "convert the model to an nnU-Net v2 folder or an ONNX export, or use another model "
        "from 'metcli weights list'"
    ),
    "io/weights.py:_download_source:--sha256 must be 64 hexadecimal": (
        "copy the full sha256 (64 characters 0-9, a-f) from the publisher"
    ),
    "io/weights.py:resolve_model:model ... is in the": (
        "use another model from 'metcli weights list', or a model folder of your own"
    ),
    "lesions/label_lesions.py:check_settings:--min-diameter-mm must be a number": (
        "give --min-diameter-mm in millimetres, for example 5"
    ),
    "lesions/label_lesions.py:check_settings:--diameter-rule must be one of": _CHOICES,
    "lesions/label_lesions.py:check_settings:--connectivity must be 6, 18": (
        "give --connectivity 6, 18 or 26"
    ),
    "prediction/image.py:ImageBackend.__init__:runtime ... is not one": _CHOICES,
    "prediction/image.py:ImageBackend.__init__:--device ... is not one": _CHOICES,
    "radiomics/settings.py:check_settings:--decision must be argmax or": _CHOICES,
    "prediction/outputs.py:participant_path:InputError(f'{pid} {exc.what}', fix=exc.fix or 'write": (  # noqa: E501
        "the participant, session or phase in the input holds characters other than letters "
        "and digits: rename it"
    ),
    "prediction/radiomics.py:read_feature_rows:InputError(exc.what, path=tables[0], fix=exc.fix)": (  # noqa: E501
        _FORWARDED
    ),
    "radiomics/classifiers.py:_check_entry:register takes a Classifier, not": (
        "register a metcli.radiomics.classifiers.Classifier (docs/developing.md)"
    ),
    "radiomics/classifiers.py:_check_entry:classifier ... the description must": (
        "write the classifier's description on one line"
    ),
    "radiomics/classifiers.py:_check_entry:classifier ... the grid must": (
        "give each grid parameter a non-empty list of values"
    ),
    "radiomics/cohort.py:plan_split:--split needs --protocol holdout": (
        "add --protocol holdout, or leave out --split"
    ),
    "radiomics/extract.py:check_options:--jobs must be a whole": "give --jobs 1 or more",
    "radiomics/extract.py:check_options:--peritumoral-mm must be a distance": (
        "give --peritumoral-mm above 0 (mm), or leave it out for no ring"
    ),
    "radiomics/settings.py:check_settings:unknown option(s) ...": (
        "leave out the settings the message names (see train-radiomics --help)"
    ),
    "radiomics/settings.py:check_settings:--cv-folds must be at least": _SEE_OPTION,
    "radiomics/settings.py:check_settings:--cv-repeats must be at least": _SEE_OPTION,
    "radiomics/settings.py:check_settings:--group-by must be participant or": _SEE_OPTION,
    "radiomics/settings.py:check_settings:--importance-trees and --importance-repeats must be": (
        _SEE_OPTION
    ),
    "radiomics/settings.py:check_settings:--inner-folds must be at least": _SEE_OPTION,
    "radiomics/settings.py:check_settings:--max-features must be at least": _SEE_OPTION,
    "radiomics/settings.py:check_settings:--pcc-threshold must be in (0,": (
        "give --pcc-threshold above 0 and at most 1 (the study used 0.6)"
    ),
    "radiomics/settings.py:check_settings:--protocol must be one of": _CHOICES,
    "radiomics/settings.py:check_settings:--search must be grid or": _SEE_OPTION,
    "radiomics/settings.py:check_settings:--search-iterations must be at least": _SEE_OPTION,
    "radiomics/settings.py:check_settings:--test-patients must be at least": (
        "give --test-patients 2 or more (the study held out 8)"
    ),
    "radiomics/settings.py:check_settings:--threshold must be youden or": _SEE_OPTION,
    "radiomics/settings.py:check_settings:--threshold-level must be patient or": _SEE_OPTION,
    "radiomics/settings.py:check_settings:--test-patients needs --protocol holdout": (
        "add --protocol holdout, or leave out --test-patients"
    ),
    "radiomics/settings.py:check_settings:grid for ... not a": (
        "key the grid by classifier names from train-radiomics --help, each with a mapping of "
        "parameter lists"
    ),
    "segmentation/backends.py:_onnx_folder:--folds applies to the nnunet": (
        "leave out --folds, or export the folds you want with metcli export-onnx --fold"
    ),
    "segmentation/export_onnx.py:parse_fold:--fold must be a non-negative": (
        "give --fold as a fold number (0, 1, ...) or 'all'"
    ),
    "segmentation/labelmaps.py:apply_label_map:the model wrote a negative": (
        "the model's output is not a label image: check the model folder and its label map, "
        "or report it"
    ),
    "segmentation/labelmaps.py:resolve_label_map:--label-map maps model label ...": (
        "name each model label once in --label-map"
    ),
    "segmentation/models.py:resolve_segmentation_model:--model ...": _FORWARDED,
    "synth/almss.py:AlmssParams.validate:... must give a value": _ALMSS_KNOB,
    "synth/almss.py:_known:class ... is not one": _ALMSS_KNOB,
    "synth/almss.py:_validate_class:demography of ... must have": _ALMSS_KNOB,
    "synth/almss.py:_validate_class:diameters of ... must be": _ALMSS_KNOB,
    "synth/almss.py:_validate_class:enhancement of ... must be": _ALMSS_KNOB,
    "synth/almss.py:_validate_class:enhancement of ... must give": _ALMSS_KNOB,
    "synth/almss.py:_validate_scalars.need:... must be ..., got": _ALMSS_KNOB,
    "synth/almss.py:_validate_scalars:liver_hu of ... must be": _ALMSS_KNOB,
    "synth/almss.py:make_params:... ... is not one": _ALMSS_KNOB,
    "synth/almss.py:make_params:... must be a mapping": _ALMSS_KNOB,
    "synth/almss.py:parse_class_values:... ... of ... is": _ALMSS_KNOB,
    "synth/almss_cohort.py:synth_almss_cohort:seed must be a whole": _ALMSS_KNOB,
    "synth/phases.py:phase_sizes:a size must give a": _SYNTH_SIZE,
    "synth/phases.py:phase_sizes:size ... is not one": _SYNTH_SIZE,
    "synth/phases.py:phase_sizes:the phases' grids must share": _SYNTH_SIZE,
    "imaging/registration.py:read_transform:InputError(exc.what, path=path, fix=exc.fix)": (
        _FORWARDED
    ),
    "segmentation/nnunet.py:_check_step_size:--step-size must be a number": (
        "give --step-size above 0 and at most 1 (0.5 is nnU-Net's default)"
    ),
    "segmentation/nnunet.py:resolve_folds:--folds ... is not a": (
        "give fold numbers (0, 1, ...) or 'all'"
    ),
    "segmentation/onnx.py:OnnxSegmenter.__init__:device must be one of": _LIBRARY,
    "segmentation/onnx.py:OnnxSegmenter.__init__:accumulate must be one of": _LIBRARY,
    "segmentation/onnx.py:OnnxSegmenter.__init__:threads must be a positive": _LIBRARY,
    "segmentation/preprocessing.py:normalize:normalisation scheme ... is not": (
        "use the nnU-Net backend for this model (the ONNX backend does not reproduce its "
        "normalisation)"
    ),
    "segmentation/segment.py:check_settings:--device ... is not one": _CHOICES,
    "segmentation/segment.py:check_settings:tta must be true or": _LIBRARY,
    "synth/phantom.py:Grid.validate:grid shape must be three": _LIBRARY,
    "synth/phantom.py:Grid.validate:grid spacing must be three": _LIBRARY,
    "synth/phantom.py:Grid.validate:anatomy_scale must be positive, got": _LIBRARY,
    "synth/phantom.py:SynthParams.validate.need:... must be ..., got": (
        "correct the synth parameter the message names (the rule is in the message)"
    ),
    "synth/phantom.py:_sign:class ... is not one": _CHOICES,
    "synth/phantom.py:grid_for:size ... is not one": _CHOICES,
    "synth/synth.py:_check_counts:... must be a whole": "give a whole number, 0 or more",
    "synth/synth.py:_check_counts:seed must be a whole": "give --seed 0 or more",
    "synth/synth.py:class_counts:subjects must be a whole": "give --subjects 1 or more",
}
