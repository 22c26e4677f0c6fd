"""Supervise ComfyUI (``main.py``) as a child process.

Lifecycle: ``NEW → STARTING → READY``; when the process dies it becomes ``DEFUNCT``
and a watchdog thread starts it again (``STARTING → READY``) until
:meth:`ComfyProcess.stop` makes it ``STOPPED``. Each process is a
:class:`~comfy_worker.comfy.child.ComfyChild` (launch, readiness, version, end); how it
is launched is :mod:`comfy_worker.comfy.launch`. The last lines of its output (a ring
buffer across restarts) explain a death.
"""

from __future__ import annotations

import collections
import enum
import logging
import shutil
import threading
import time
from pathlib import Path

from comfy_worker.comfy.child import ComfyChild
from comfy_worker.comfy.launch import (
    DEATH_TAIL_LINES,
    HOST,
    LaunchConfig,
    build_command,
    cli_flag_checker,
    death_message,
    free_port,
    gpu_present,
    launch_config,
)
from comfy_worker.comfy.version import Features
from comfy_worker.config import env_name
from comfy_worker.errors import ComfyDied, ComfyStartError

__all__ = ["HOST", "ComfyProcess", "LaunchConfig", "State", "build_command",
           "cli_flag_checker", "death_message", "free_port", "gpu_present", "launch_config"]

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 200
MAX_RESTARTS = 5
"""Consecutive failed restarts before the supervisor gives up (state stays DEFUNCT)."""


class State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    READY = "ready"
    DEFUNCT = "defunct"
    STOPPED = "stopped"


class ComfyProcess:
    """One supervised ComfyUI. Thread-safe; callers run jobs one at a time."""

    def __init__(self, cfg: LaunchConfig) -> None:
        self.cfg = cfg
        self._state = State.NEW
        self._cond = threading.Condition()
        self._child: ComfyChild | None = None
        self._generation = 0
        self._tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self._failures = 0
        self._last_error: str | None = None
        self._watchdog: threading.Thread | None = None
        self._planned: str | None = None
        """The reason of a restart asked for with :meth:`restart` (not a death)."""
        self._starting = False
        """A start() is between spawning and ready: stop() waits for it to see STOPPED."""
        self.restarts = 0
        self.features = Features()
        """What the running ComfyUI offers (its version first), read when it got ready."""

    # --- introspection --------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def base_url(self) -> str:
        child = self._child
        if child is None:
            raise ComfyDied("ComfyUI has not been started")
        return child.base_url

    @property
    def generation(self) -> int:
        """Increments with every (re)start: a job that saw it change lost its ComfyUI."""
        return self._generation

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.proc.pid if child else None

    @property
    def ready_seconds(self) -> float | None:
        child = self._child
        return child.ready_seconds if child else None

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def exit_reason(self) -> str:
        """Why the current process is gone (its exit status and last log lines)."""
        child = self._child
        if child is not None:
            rc = child.proc.poll()
            if rc is not None:
                child.exited.wait(2)
                return death_message(rc, self.log_tail(), during="")
        return self._last_error or "ComfyUI is not running"

    def log_tail(self, lines: int = DEATH_TAIL_LINES) -> list[str]:
        return list(self._tail)[-lines:]

    def alive(self) -> bool:
        child = self._child
        return child is not None and child.alive()

    def _assert_state(self, *allowed: State) -> None:
        if self._state not in allowed:
            names = " or ".join(s.name for s in allowed)
            raise ComfyStartError(f"ComfyUI supervisor state is {self._state.name} "
                                  f"(must be {names})")

    def _set_state(self, state: State) -> None:
        """STOPPED is final: a restart racing with :meth:`stop` cannot leave a process
        running (its start-up sees STOPPED and terminates it)."""
        with self._cond:
            if self._state is not State.STOPPED:
                self._state = state
            self._cond.notify_all()

    # --- start / readiness ------------------------------------------------------------

    def start(self) -> None:
        """Start ComfyUI and wait until it answers ``/system_stats``.

        Raises :class:`ComfyStartError` (with the last log lines) if it exits or does not
        answer within ``boot_timeout``.
        """
        with self._cond:
            self._assert_state(State.NEW)
            self._state = State.STARTING
            self._starting = True
        try:
            self._check_paths()
            self._spawn_and_wait()
        except ComfyStartError as exc:
            self._last_error = exc.message
            self._set_state(State.DEFUNCT)
            raise
        finally:
            with self._cond:
                self._starting = False
                self._cond.notify_all()
        self._watchdog = threading.Thread(target=self._watch, name="comfyui-watchdog",
                                          daemon=True)
        self._watchdog.start()

    def _check_paths(self) -> None:
        main = self.cfg.comfyui_dir / "main.py"
        if not main.is_file():
            raise ComfyStartError(
                f"{env_name('comfyui_dir')}={str(self.cfg.comfyui_dir)!r} has no main.py",
                hint=f"set {env_name('comfyui_dir')} (or --comfyui-dir) to a ComfyUI checkout; "
                "scripts/setup_comfyui.sh makes one in ./.comfyui/ComfyUI",
            )
        python = self.cfg.python
        if shutil.which(python) is None and not Path(python).is_file():
            raise ComfyStartError(f"{env_name('comfyui_python')}={python!r} is not an executable",
                                  hint=f"point {env_name('comfyui_python')} at the Python that has "
                                  "ComfyUI's requirements installed")
        for d in (self.cfg.input_dir, self.cfg.output_dir, self.cfg.temp_dir,
                  self.cfg.user_dir):
            d.mkdir(parents=True, exist_ok=True)

    def _spawn_and_wait(self) -> None:
        self._generation += 1
        child = ComfyChild.spawn(self.cfg, self._generation, self._tail)
        self._child = child
        self.features = child.wait_ready(lambda: self._state is State.STOPPED)
        self._failures = 0
        self._last_error = None
        with self._cond:
            if self._state is not State.STOPPED:
                self._state = State.READY
            self._cond.notify_all()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until READY (e.g. while the watchdog restarts ComfyUI).

        Raises :class:`ComfyDied` when the supervisor gave up or was stopped.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            # READY but dead: the watchdog has not noticed yet; it will restart it.
            while self._state is not State.READY or not self.alive():
                if self._state is State.STOPPED:
                    raise ComfyDied("ComfyUI was stopped")
                if self._state is State.DEFUNCT and self._failures >= MAX_RESTARTS:
                    raise ComfyDied(f"ComfyUI is down: {self._last_error}",
                                    hint=f"the full log is {self.cfg.log_path}")
                if self._state is State.NEW:
                    raise ComfyDied("ComfyUI has not been started")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ComfyDied(f"ComfyUI is not ready (state {self._state.name})")
                self._cond.wait(min(remaining, 0.1) if remaining is not None else 0.1)

    # --- supervision --------------------------------------------------------------------

    def _watch(self) -> None:
        while (child := self._child) is not None:
            rc = child.proc.wait()
            child.exited.wait(2)
            if self._state is State.STOPPED:
                return
            planned, self._planned = self._planned, None
            if planned is None:
                message = death_message(rc, self.log_tail(), during="unexpectedly")
                log.error("%s", message)
                self._last_error = message
                self._set_state(State.DEFUNCT)
            if not self._respawn(planned):
                return

    def _respawn(self, planned: str | None) -> bool:
        """Start a new process until one is ready: True, or False when the supervisor
        gives up (MAX_RESTARTS failed starts in a row) or was stopped."""
        while True:
            if self._failures >= MAX_RESTARTS:
                log.error("ComfyUI failed to restart %d times; giving up", self._failures)
                with self._cond:
                    self._cond.notify_all()
                return False
            time.sleep(min(2.0 * self._failures, 10.0))
            if self._state is State.STOPPED:
                return False
            self.restarts += 1
            if planned is not None:
                log.info("starting a fresh ComfyUI (restart #%d: %s)", self.restarts, planned)
            else:
                log.warning("restarting ComfyUI (restart #%d)", self.restarts)
            self._set_state(State.STARTING)
            try:
                self._spawn_and_wait()
                return True
            except ComfyStartError as exc:
                self._failures += 1
                self._last_error = exc.message
                log.error("ComfyUI restart failed: %s", exc.message)
                if self._state is not State.STOPPED:
                    self._set_state(State.DEFUNCT)

    def restart(self, reason: str) -> None:
        """Replace a READY ComfyUI with a fresh process (between jobs, never during one).

        Returns at once: the state is STARTING from now on, so :meth:`wait_ready` (and so
        the next job) waits for the new process; the old one gets SIGTERM (SIGKILL after
        ``stop_grace``) and the watchdog starts the new one.
        """
        with self._cond:
            self._assert_state(State.READY)
            self._planned = reason
            self._state = State.STARTING
            self._cond.notify_all()
        child = self._child
        log.info("restarting ComfyUI between jobs: %s", reason)
        if child is not None:
            threading.Thread(target=child.terminate, name="comfyui-restart",
                             daemon=True).start()

    def kill(self) -> None:
        """SIGKILL the current process (tests use it; the watchdog restarts ComfyUI)."""
        child = self._child
        if child is not None and child.proc.poll() is None:
            child.proc.kill()

    # --- stop ------------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_grace``; idempotent."""
        self._set_state(State.STOPPED)
        with self._cond:  # a start() spawning now terminates its own child on seeing STOPPED
            self._cond.wait_for(lambda: not self._starting, timeout=self.cfg.stop_grace + 5)
        child = self._child
        if child is not None:
            child.terminate()
        watchdog = self._watchdog
        if watchdog is not None and watchdog is not threading.current_thread():
            watchdog.join(5)
        log.info("ComfyUI stopped")
