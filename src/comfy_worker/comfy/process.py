"""Launch and supervise ComfyUI (``main.py``) as a child process.

Lifecycle: ``NEW → STARTING → READY``; when the process dies it becomes ``DEFUNCT``
and a watchdog thread starts it again (``STARTING → READY``) until
:meth:`ComfyProcess.stop` makes it ``STOPPED``. ComfyUI listens on 127.0.0.1 on a free
port, with its own input/output/temp/user folders under ``work_dir`` and the model
roots of ``--extra-model-paths-config``. Its stdout and stderr go to
``work_dir/comfyui.log``, to this module's logger, and to a ring buffer whose last lines
explain a death.
"""

from __future__ import annotations

import collections
import enum
import logging
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import requests

from comfy_worker.comfy.client import ComfyClient
from comfy_worker.comfy.version import MIN_VERSION, Features, unsupported_reason, version_text
from comfy_worker.config import Settings, env_name
from comfy_worker.errors import ComfyDied, ComfyError, ComfyStartError, ComfyVersionUnsupported

log = logging.getLogger(__name__)
comfy_log = logging.getLogger(__name__ + ".comfyui")

HOST = "127.0.0.1"
LOG_TAIL_LINES = 200
DEATH_TAIL_LINES = 25
READY_POLL_S = 0.1
MAX_RESTARTS = 5
"""Consecutive failed restarts before the supervisor gives up (state stays DEFUNCT)."""


class State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    READY = "ready"
    DEFUNCT = "defunct"
    STOPPED = "stopped"


@dataclass(frozen=True)
class LaunchConfig:
    comfyui_dir: Path
    python: str
    work_dir: Path
    """Holds input/, output/, temp/, user/ and comfyui.log."""
    extra_model_paths: Path | None = None
    cpu: bool = False
    extra_args: tuple[str, ...] = ()
    boot_timeout: float = 300.0
    stop_grace: float = 10.0

    @property
    def input_dir(self) -> Path:
        return self.work_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.work_dir / "output"

    @property
    def temp_dir(self) -> Path:
        return self.work_dir / "temp"

    @property
    def user_dir(self) -> Path:
        return self.work_dir / "user"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "comfyui.log"


# --- pure decisions -------------------------------------------------------------------


def build_command(cfg: LaunchConfig, port: int, supports: Callable[[str], bool]) -> list[str]:
    """``main.py``'s command line. ``supports(flag)`` says whether this ComfyUI has a flag
    that older versions lack (``--user-directory``, ``--database-url``)."""
    cmd = [
        cfg.python, "-u", str(cfg.comfyui_dir / "main.py"),
        "--listen", HOST, "--port", str(port),
        "--disable-auto-launch",
        "--input-directory", str(cfg.input_dir),
        "--output-directory", str(cfg.output_dir),
        "--temp-directory", str(cfg.temp_dir),
    ]
    if supports("--user-directory"):
        cmd += ["--user-directory", str(cfg.user_dir)]
    if supports("--database-url"):
        cmd += ["--database-url", f"sqlite:///{cfg.work_dir / 'comfyui.db'}"]
    if cfg.extra_model_paths is not None:
        cmd += ["--extra-model-paths-config", str(cfg.extra_model_paths)]
    if cfg.cpu and "--cpu" not in cfg.extra_args:
        cmd.append("--cpu")
    cmd += list(cfg.extra_args)
    return cmd


def death_message(returncode: int | None, tail: Sequence[str], *, during: str) -> str:
    """Why ComfyUI died, with a guess at the cause and its last log lines."""
    if returncode is None:
        what = "is not answering"
    elif returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        what = f"was killed by {name}"
        if returncode == -signal.SIGKILL:
            what += " (out of memory? the kernel's OOM killer sends SIGKILL)"
    else:
        what = f"exited with status {returncode}"
    lines = "\n".join(f"  | {line}" for line in tail[-DEATH_TAIL_LINES:])
    head = f"ComfyUI {what} {during}".rstrip()
    return head + (f"; last log lines:\n{lines}" if lines else "")


def gpu_present() -> bool:
    """An NVIDIA (or ROCm) GPU is visible, found without importing torch."""
    if Path("/dev/nvidia0").exists() or Path("/dev/kfd").exists():
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def cli_flag_checker(comfyui_dir: Path) -> Callable[[str], bool]:
    """Whether this checkout's ``comfy/cli_args.py`` defines a flag."""
    try:
        text = (comfyui_dir / "comfy" / "cli_args.py").read_text(encoding="utf-8")
    except OSError:
        text = ""
    return lambda flag: f'"{flag}"' in text


# --- the child process ------------------------------------------------------------------


@dataclass
class _Child:
    proc: subprocess.Popen[bytes]
    port: int
    generation: int
    started: float
    reader: threading.Thread | None = None
    ready_seconds: float | None = None
    exited: threading.Event = field(default_factory=threading.Event)


class ComfyProcess:
    """One supervised ComfyUI. Thread-safe; callers run jobs one at a time."""

    def __init__(self, cfg: LaunchConfig) -> None:
        self.cfg = cfg
        self._state = State.NEW
        self._cond = threading.Condition()
        self._child: _Child | None = None
        self._generation = 0
        self._tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self._failures = 0
        self._last_error: str | None = None
        self._watchdog: threading.Thread | None = None
        self._planned: str | None = None
        """The reason of a restart asked for with :meth:`restart` (not a death)."""
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
        return f"http://{HOST}:{child.port}"

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
        return child is not None and child.proc.poll() is None

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
        self._check_paths()
        try:
            self._spawn_and_wait()
        except ComfyStartError as exc:
            self._last_error = exc.message
            self._set_state(State.DEFUNCT)
            raise
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
        port = free_port()
        cmd = build_command(self.cfg, port, cli_flag_checker(self.cfg.comfyui_dir))
        log.info("starting ComfyUI on %s:%d (%s)", HOST, port,
                 "cpu" if self.cfg.cpu else "gpu")
        log.debug("ComfyUI command: %s", " ".join(cmd))
        logfile = self.cfg.log_path.open("ab")
        try:
            proc = subprocess.Popen(cmd, cwd=self.cfg.comfyui_dir, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except OSError as exc:
            logfile.close()
            raise ComfyStartError(f"could not run {cmd[0]!r}: {exc}",
                                  hint=f"check {env_name('comfyui_python')}") from exc
        self._generation += 1
        child = _Child(proc=proc, port=port, generation=self._generation,
                       started=time.monotonic())
        child.reader = threading.Thread(target=self._pump, args=(proc.stdout, logfile, child),
                                        name="comfyui-log", daemon=True)
        child.reader.start()
        self._child = child
        self._wait_ready(child)

    def _pump(self, stream: IO[bytes] | None, logfile: IO[bytes], child: _Child) -> None:
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
            child.exited.set()

    def _wait_ready(self, child: _Child) -> None:
        deadline = child.started + self.cfg.boot_timeout
        url = f"http://{HOST}:{child.port}/system_stats"
        with requests.Session() as http:
            while True:
                if self._state is State.STOPPED:
                    self._terminate(child)
                    raise ComfyStartError("ComfyUI was stopped while starting")
                rc = child.proc.poll()
                if rc is not None:
                    child.exited.wait(2)  # let the reader drain the last lines
                    raise ComfyStartError(
                        death_message(rc, self.log_tail(), during="while starting"),
                        hint="fix the error above (missing Python package? bad "
                        f"{env_name('comfyui_extra_args')}?); the full log is "
                        + str(self.cfg.log_path),
                    )
                try:
                    if http.get(url, timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    self._terminate(child)
                    raise ComfyStartError(
                        f"ComfyUI did not answer /system_stats within "
                        f"{self.cfg.boot_timeout:.0f} s; last log lines:\n"
                        + "\n".join(f"  | {x}" for x in self.log_tail()),
                        hint=f"raise {env_name('boot_timeout')} if start-up is just slow",
                    )
                time.sleep(READY_POLL_S)
        self.features = self._check_features(child)
        child.ready_seconds = time.monotonic() - child.started
        self._failures = 0
        self._last_error = None
        log.info("ComfyUI %s ready in %.1f s (pid %d, port %d; per-prompt cancel: %s)",
                 self.features.version or "(version not reported)", child.ready_seconds,
                 child.proc.pid, child.port, "yes" if self.features.cancel_by_id else "no")
        with self._cond:
            if self._state is not State.STOPPED:
                self._state = State.READY
            self._cond.notify_all()

    def _check_features(self, child: _Child) -> Features:
        """Read the version and features; refuse a ComfyUI older than the minimum."""
        client = ComfyClient(f"http://{HOST}:{child.port}")
        try:
            features = client.features()
        except ComfyError as exc:
            log.warning("could not read ComfyUI's version and features: %s", exc.message)
            features = Features()
        finally:
            client.close()
        reason = unsupported_reason(features.version)
        if reason is not None:
            self._terminate(child)
            raise ComfyVersionUnsupported(
                f"{reason} ({env_name('comfyui_dir')}={self.cfg.comfyui_dir})",
                hint=f"point {env_name('comfyui_dir')} at ComfyUI "
                f"{version_text(MIN_VERSION)} or newer (the image carries one), or use an "
                "older comfy-worker release")
        if features.version is None:
            log.warning("ComfyUI did not report its version in /system_stats; assuming it "
                        "is recent enough")
        return features

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
            threading.Thread(target=self._terminate, args=(child,), name="comfyui-restart",
                             daemon=True).start()

    def kill(self) -> None:
        """SIGKILL the current process (tests use it; the watchdog restarts ComfyUI)."""
        child = self._child
        if child is not None and child.proc.poll() is None:
            child.proc.kill()

    # --- stop ------------------------------------------------------------------------------

    def _terminate(self, child: _Child) -> None:
        proc = child.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.cfg.stop_grace)
            except subprocess.TimeoutExpired:
                log.warning("ComfyUI ignored SIGTERM for %.0f s; killing it",
                            self.cfg.stop_grace)
                proc.kill()
                proc.wait()
        child.exited.wait(2)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_grace``; idempotent."""
        self._set_state(State.STOPPED)
        child = self._child
        if child is not None:
            self._terminate(child)
        watchdog = self._watchdog
        if watchdog is not None and watchdog is not threading.current_thread():
            watchdog.join(5)
        log.info("ComfyUI stopped")


def launch_config(settings: Settings, work_dir: Path,
                  extra_model_paths: Path | None = None) -> LaunchConfig:
    """How to launch ComfyUI for these settings (COMFYUI_DIR is required)."""
    s = settings
    if s.comfyui_dir is None:
        raise ComfyStartError(f"{env_name('comfyui_dir')} is not set",
                              hint=f"set {env_name('comfyui_dir')} (or --comfyui-dir) to a ComfyUI "
                              "checkout; scripts/setup_comfyui.sh makes one")
    cpu = s.comfyui_cpu if s.comfyui_cpu is not None else not gpu_present()
    return LaunchConfig(
        comfyui_dir=Path(s.comfyui_dir), python=s.comfyui_python, work_dir=work_dir,
        extra_model_paths=extra_model_paths, cpu=cpu, extra_args=tuple(s.comfyui_extra_args),
        boot_timeout=s.boot_timeout,
    )
