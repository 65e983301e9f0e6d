"""A local simulator of GlobalData's ID Pass API, for demos, tests and benchmarks.

It implements the public facts of the ID Pass API and the project's stances (see
:mod:`archiver.sandbox.details` for the choices it makes where the pages are
silent), plus admin routes under ``/_sandbox/`` to create passes in any state,
move the clock, read the ground truth and inject faults. Nothing on the
archiver's production path imports this package.
"""

from archiver.sandbox.server import SandboxServer
from archiver.sandbox.state import OffsetClock, SandboxState

__all__ = ["OffsetClock", "SandboxServer", "SandboxState"]
