"""idpass-archiver: keep GlobalData ID Pass verification images before they are deleted."""

# Kept equal to pyproject.toml's version by tests/test_cli.py (reading the installed
# distribution's metadata instead cost 18 ms of every start).
__version__ = "0.1.0"

__all__ = ["__version__"]
