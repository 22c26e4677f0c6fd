"""Progress: one log line per file, and an aggregate bar on a terminal.

The bar (bytes, MB/s, ETA) is drawn by ``tqdm`` on stderr only when stderr is a TTY;
logs and the ``--json`` summary stay clean for machines. While the bar is shown, log
records are written above it (``tqdm.contrib.logging``), so lines and bar never mix.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm

log = logging.getLogger(__name__)

BAR_FORMAT = "{percentage:3.0f}%|{bar}| {n_fmt}B/{total_fmt}B  {rate_fmt}  ETA {remaining}"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _screen(stream: TextIO) -> tuple[int, int]:
    """The terminal's (columns, lines); one that reports 0 (a fresh pty, some container
    consoles) gets 100 x 24, where tqdm would hide its bar."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return 100, 24
    return size.columns or 100, size.lines or 24


class Progress:
    """Thread-safe byte counter with an optional bar."""

    def __init__(self, total: int, *, bar: bool | None = None, stream: TextIO | None = None
                 ) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.done = 0
        self._lock = threading.Lock()
        isatty = getattr(self.stream, "isatty", lambda: False)()
        self.bar = isatty if bar is None else bar
        self._tqdm: tqdm | None = None
        self._logs = contextlib.ExitStack()

    def add(self, n: int) -> None:
        """``n`` more bytes arrived (negative: a failed attempt's bytes are dropped)."""
        with self._lock:
            self.done += n
            if self._tqdm is not None:
                self._tqdm.update(n)

    def start(self) -> Progress:
        if self.bar and self.total > 0:
            from tqdm import tqdm  # here: a warm start draws no bar and needs no tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            cols, lines = _screen(self.stream)
            self._tqdm = tqdm(total=self.total, file=self.stream, unit="B", unit_scale=True,
                              unit_divisor=1000, bar_format=BAR_FORMAT, mininterval=0.25,
                              ncols=cols, nrows=lines, leave=True)
            self._logs.enter_context(logging_redirect_tqdm(tqdm_class=tqdm))
        return self

    def file_done(self, path: str, action: str, nbytes: int, seconds: float) -> None:
        rate = f"{nbytes / seconds / 1e6:.1f} MB/s" if action == "downloaded" and seconds > 0 \
            else "-"
        log.info("%-10s %s (%s, %.2f s, %s)", action, path, human_bytes(nbytes), seconds, rate)

    def stop(self) -> None:
        self._logs.close()
        with self._lock:
            if self._tqdm is not None:
                self._tqdm.close()
                self._tqdm = None
