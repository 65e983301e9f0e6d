"""idpass-archiver: keep GlobalData ID Pass verification images before they are deleted."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("idpass-archiver")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
