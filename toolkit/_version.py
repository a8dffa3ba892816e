"""The single place where metcli's version is written."""

__version__ = "0.1.0"
