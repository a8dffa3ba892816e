"""metcli: where do liver metastases come from? A toolkit for CT virtual-biopsy studies.

The library is imported as ``metcli``. Importing it has no side effects: no
logging handlers (beyond the library's NullHandler), no environment changes,
no network, and no heavy imports (torch, nnunetv2, MONAI, onnxruntime are
imported by the functions that need them).
"""

import logging

from metcli._version import __version__

logging.getLogger("metcli").addHandler(logging.NullHandler())

__all__ = ["__version__"]
