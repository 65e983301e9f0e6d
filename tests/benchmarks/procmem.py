"""A child process's memory, measured from outside while it runs (Linux).

Not ``wait4``'s ``ru_maxrss``: Linux carries a process's peak RSS across ``execve``,
and a child started with fork or vfork (``subprocess`` uses vfork) begins with its
parent's. So a child of a benchmark that holds a few hundred MB reports at least
that much, whatever it used itself; in the benchmarks here, later runs of small
children all reported the benchmark's own 288 MB. ``VmHWM`` in ``/proc/<pid>/status``
is the high-water mark of the address space the child got at ``execve``: its own.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path


class MemorySampler:
    """Samples ``pid`` until it exits: its high-water mark (``VmHWM``) and its RSS
    over time. Sampled often (the peak of a run is only missed if it comes in the
    last ``interval`` before exit, when a process frees rather than allocates)."""

    def __init__(
        self, pid: int, t0: float, interval: float = 0.05, series_every: float = 0.2
    ) -> None:
        self._path = Path(f"/proc/{pid}/status")
        self._t0 = t0
        self._interval = interval
        self._series_every = series_every
        self.peak_mb = 0.0
        self.series: list[tuple[float, float]] = []  # (seconds since t0, RSS in MB)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> MemorySampler:
        self._thread.start()
        return self

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        next_point = 0.0
        while True:
            try:
                text = self._path.read_text()
            except OSError:  # reaped
                return
            fields = dict(
                (line.split(":", 1)[0], line.split()[1])
                for line in text.splitlines()
                if line.startswith(("VmHWM", "VmRSS"))
            )
            if "VmHWM" not in fields:  # a zombie: its memory is gone
                return
            self.peak_mb = max(self.peak_mb, int(fields["VmHWM"]) / 1024)
            now = time.perf_counter() - self._t0
            if now >= next_point:
                self.series.append((round(now, 2), round(int(fields["VmRSS"]) / 1024, 1)))
                next_point = now + self._series_every
            time.sleep(self._interval)
