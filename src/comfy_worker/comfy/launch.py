"""How ComfyUI is launched (pure, but for :func:`gpu_present` and :func:`free_port`):
its folders and log under the worker's work dir (:class:`LaunchConfig`, made from the
settings by :func:`launch_config`), its command line, and the message that explains its
death."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from comfy_worker.config import Settings, env_name
from comfy_worker.errors import ComfyStartError

HOST = "127.0.0.1"
DEATH_TAIL_LINES = 25


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
