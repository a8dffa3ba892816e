"""The ``metcli`` entry point: a click group whose subcommands live one per module.

Subcommand modules are imported when click asks for them; they import only click
at module level and the library inside the command, so ``metcli --help`` stays
fast and no heavy library (torch, nnunetv2, onnxruntime) is imported for it.
"""

from __future__ import annotations

import importlib

import click

from metcli._version import __version__

#: Registered subcommands: name -> module under metcli.cli. Only built commands are here.
COMMANDS = {
    "synth": "synth",
    "import-dicom": "import_dicom",
    "import-mask": "import_mask",
    "split-lesions": "split_lesions",
    "segment": "segment",
    "extract": "extract",
    "evaluate": "evaluate",
    "evaluate-seg": "evaluate_seg",
    "train-radiomics": "train_radiomics",
    "train-cnn": "train_cnn",
    "predict": "predict",
    "export-onnx": "export_onnx",
    "train-seg": "train_seg",
    "weights": "weights",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        module_name = COMMANDS.get(name)
        if module_name is None:
            return None
        module = importlib.import_module(f"metcli.cli.{module_name}")
        return module.command


CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(
    __version__, "-V", "--version", prog_name="metcli", message="%(prog)s %(version)s"
)
def cli():
    """metcli: where do liver metastases come from? CT virtual-biopsy toolkit.

    Independent subcommands read and write BIDS-like folders of NIfTI images and
    TSV/JSON tables; chain them in scripts, or run them per participant on a
    cluster. For research use only: no classifier trained on real patients ships
    with metcli.
    """


def main(argv=None):
    """Console-script entry point."""
    return cli.main(args=argv, prog_name="metcli")


if __name__ == "__main__":  # pragma: no cover
    main()
