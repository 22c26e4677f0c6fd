"""One ComfyUI process (``main.py``), from launch until it answers, and its end.

:meth:`ComfyChild.spawn` starts it on a free port with its output pumped to
``work_dir/comfyui.log``, to this module's logger and to a ring buffer shared with the
supervisor (the last lines explain a death); :meth:`ComfyChild.wait_ready` polls
``/system_stats`` until it answers, then reads its version and features and refuses a
ComfyUI older than the minimum; :meth:`ComfyChild.terminate` stops it (SIGTERM, then
SIGKILL after the grace time). The supervisor (:mod:`comfy_worker.comfy.process`) decides
when a child starts and what its death means.
"""

from __future__ import annotations

import collections
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import IO

import requests

from comfy_worker.comfy.client import ComfyClient
from comfy_worker.comfy.launch import (
    HOST,
    LaunchConfig,
    build_command,
    cli_flag_checker,
    death_message,
    free_port,
)
from comfy_worker.comfy.version import MIN_VERSION, Features, unsupported_reason, version_text
from comfy_worker.config import env_name
from comfy_worker.errors import ComfyError, ComfyStartError, ComfyVersionUnsupported

log = logging.getLogger(__name__)
comfy_log = logging.getLogger(__name__ + ".comfyui")

READY_POLL_S = 0.1


class ComfyChild:
    """A launched ComfyUI process (one generation of the supervised ComfyUI)."""

    def __init__(self, cfg: LaunchConfig, proc: subprocess.Popen[bytes], port: int,
                 generation: int, tail: collections.deque[str]) -> None:
        self.cfg = cfg
        self.proc = proc
        self.port = port
        self.generation = generation
        self.started = time.monotonic()
        self.ready_seconds: float | None = None
        self.exited = threading.Event()
        """Set once its output is drained (its last lines are in the tail)."""
        self._tail = tail

    @classmethod
    def spawn(cls, cfg: LaunchConfig, generation: int, tail: collections.deque[str]
              ) -> ComfyChild:
        port = free_port()
        cmd = build_command(cfg, port, cli_flag_checker(cfg.comfyui_dir))
        log.info("starting ComfyUI on %s:%d (%s)", HOST, port, "cpu" if cfg.cpu else "gpu")
        log.debug("ComfyUI command: %s", " ".join(cmd))
        logfile = cfg.log_path.open("ab")
        try:
            proc = subprocess.Popen(cmd, cwd=cfg.comfyui_dir, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except OSError as exc:
            logfile.close()
            raise ComfyStartError(f"could not run {cmd[0]!r}: {exc}",
                                  hint=f"check {env_name('comfyui_python')}") from exc
        child = cls(cfg, proc, port, generation, tail)
        threading.Thread(target=child._pump, args=(proc.stdout, logfile), name="comfyui-log",
                         daemon=True).start()
        return child

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _pump(self, stream: IO[bytes] | None, logfile: IO[bytes]) -> None:
        try:
            if stream is not None:
                for raw in iter(stream.readline, b""):
                    logfile.write(raw)
                    logfile.flush()
                    line = raw.decode("utf-8", "replace").rstrip()
                    self._tail.append(line)
                    comfy_log.info("%s", line)
        finally:
            logfile.close()
            self.exited.set()

    def wait_ready(self, stopped: Callable[[], bool]) -> Features:
        """Poll ``/system_stats`` until it answers; then its features. Raises
        :class:`ComfyStartError` (with the last log lines) when it exits, does not answer
        within ``boot_timeout``, is too old, or ``stopped()`` turns true."""
        deadline = self.started + self.cfg.boot_timeout
        url = f"{self.base_url}/system_stats"
        with requests.Session() as http:
            while True:
                if stopped():
                    self.terminate()
                    raise ComfyStartError("ComfyUI was stopped while starting")
                rc = self.proc.poll()
                if rc is not None:
                    self.exited.wait(2)  # let the reader drain the last lines
                    raise ComfyStartError(
                        death_message(rc, list(self._tail), during="while starting"),
                        hint="fix the error above (missing Python package? bad "
                        f"{env_name('comfyui_extra_args')}?); the full log is "
                        + str(self.cfg.log_path))
                try:
                    if http.get(url, timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    self.terminate()
                    raise ComfyStartError(
                        f"ComfyUI did not answer /system_stats within "
                        f"{self.cfg.boot_timeout:.0f} s; last log lines:\n"
                        + "\n".join(f"  | {x}" for x in list(self._tail)[-25:]),
                        hint=f"raise {env_name('boot_timeout')} if start-up is just slow")
                time.sleep(READY_POLL_S)
        features = self._features()
        self.ready_seconds = time.monotonic() - self.started
        log.info("ComfyUI %s ready in %.1f s (pid %d, port %d; per-prompt cancel: %s)",
                 features.version or "(version not reported)", self.ready_seconds,
                 self.proc.pid, self.port, "yes" if features.cancel_by_id else "no")
        return features

    def _features(self) -> Features:
        """Read the version and features; refuse a ComfyUI older than the minimum."""
        client = ComfyClient(self.base_url)
        try:
            features = client.features()
        except ComfyError as exc:
            log.warning("could not read ComfyUI's version and features: %s", exc.message)
            features = Features()
        finally:
            client.close()
        reason = unsupported_reason(features.version)
        if reason is not None:
            self.terminate()
            raise ComfyVersionUnsupported(
                f"{reason} ({env_name('comfyui_dir')}={self.cfg.comfyui_dir})",
                hint=f"point {env_name('comfyui_dir')} at ComfyUI "
                f"{version_text(MIN_VERSION)} or newer (the image carries one), or use an "
                "older comfy-worker release")
        if features.version is None:
            log.warning("ComfyUI did not report its version in /system_stats; assuming it "
                        "is recent enough")
        return features

    def terminate(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_grace``; waits for its output to drain."""
        proc = self.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.cfg.stop_grace)
            except subprocess.TimeoutExpired:
                log.warning("ComfyUI ignored SIGTERM for %.0f s; killing it",
                            self.cfg.stop_grace)
                proc.kill()
                proc.wait()
        self.exited.wait(2)
