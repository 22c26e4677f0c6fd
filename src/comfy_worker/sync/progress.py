"""Progress: one log line per file, and an aggregate bar on a terminal.

The bar (bytes, MB/s, ETA) is drawn on stderr only when stderr is a TTY; logs and the
``--json`` summary stay clean for machines.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TextIO

log = logging.getLogger(__name__)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def render_bar(done: int, total: int, elapsed: float, width: int = 30) -> str:
    """``[#####.....] 1.2/4.0 GiB  245.3 MB/s  ETA 11s`` (pure)."""
    frac = min(1.0, done / total) if total else 1.0
    filled = int(frac * width)
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else float("inf")
    eta_s = f"{eta:.0f}s" if eta != float("inf") else "--"
    return (f"[{'#' * filled}{'.' * (width - filled)}] {human_bytes(done)}/"
            f"{human_bytes(total)}  {rate / 1e6:.1f} MB/s  ETA {eta_s}")


class Progress:
    """Thread-safe byte counter with an optional bar thread."""

    def __init__(self, total: int, *, bar: bool | None = None, stream: TextIO | None = None
                 ) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.done = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        isatty = getattr(self.stream, "isatty", lambda: False)()
        self.bar = isatty if bar is None else bar
        self._thread: threading.Thread | None = None

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n

    def start(self) -> Progress:
        if self.bar and self.total > 0:
            self._thread = threading.Thread(target=self._run, name="sync-progress",
                                            daemon=True)
            self._thread.start()
        return self

    def _draw(self) -> None:
        with self._lock:
            done = self.done
        self.stream.write("\r" + render_bar(done, self.total, time.monotonic() - self._t0)
                          + "\x1b[K")
        self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self._draw()

    def file_done(self, path: str, action: str, nbytes: int, seconds: float) -> None:
        rate = f"{nbytes / seconds / 1e6:.1f} MB/s" if action == "downloaded" and seconds > 0 \
            else "-"
        if self.bar and self._thread is not None:
            self.stream.write("\r\x1b[K")
        log.info("%-10s %s (%s, %.2f s, %s)", action, path, human_bytes(nbytes), seconds, rate)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
