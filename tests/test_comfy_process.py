"""The ComfyUI supervisor, on real child processes: a stand-in main.py that serves
/system_stats like ComfyUI (fast), one that crashes on start, one that never answers."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest
import requests

from comfy_worker.comfy.process import (
    ComfyProcess,
    LaunchConfig,
    State,
    build_command,
    cli_flag_checker,
    death_message,
)
from comfy_worker.comfy.version import MIN_VERSION, parse_version, unsupported_reason
from comfy_worker.errors import ComfyDied, ComfyStartError, ComfyVersionUnsupported

SERVING_MAIN = '''
import argparse, http.server, json, sys
p = argparse.ArgumentParser()
p.add_argument("--port", type=int)
args, _ = p.parse_known_args()
print("argv:", " ".join(sys.argv[1:]), flush=True)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"system": {}}).encode()
        self.send_response(200 if self.path == "/system_stats" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
print("Starting server", flush=True)
http.server.HTTPServer(("127.0.0.1", args.port), H).serve_forever()
'''

CRASHING_MAIN = '''
import sys
print("Total VRAM 0 MB")
print("ModuleNotFoundError: No module named 'kornia'", file=sys.stderr)
sys.exit(3)
'''

SILENT_MAIN = "import time\nprint('loading...', flush=True)\ntime.sleep(60)\n"


def fake_comfyui(tmp_path: Path, main: str, cli_args: str = "") -> Path:
    root = tmp_path / "ComfyUI"
    (root / "comfy").mkdir(parents=True)
    (root / "main.py").write_text(main)
    (root / "comfy" / "cli_args.py").write_text(cli_args)
    return root


def config(root: Path, tmp_path: Path, **kw: object) -> LaunchConfig:
    return LaunchConfig(comfyui_dir=root, python=sys.executable, work_dir=tmp_path / "work",
                        **kw)


def test_command_has_own_dirs_model_paths_cpu_and_only_supported_flags(tmp_path: Path) -> None:
    cfg = LaunchConfig(comfyui_dir=Path("/c"), python="py", work_dir=Path("/w"),
                       extra_model_paths=Path("/w/extra.yaml"), cpu=True,
                       extra_args=("--disable-api-nodes",))
    cmd = build_command(cfg, 8189, lambda flag: flag == "--user-directory")
    assert cmd == ["py", "-u", "/c/main.py", "--listen", "127.0.0.1", "--port", "8189",
                   "--disable-auto-launch", "--input-directory", "/w/input",
                   "--output-directory", "/w/output", "--temp-directory", "/w/temp",
                   "--user-directory", "/w/user", "--extra-model-paths-config",
                   "/w/extra.yaml", "--cpu", "--disable-api-nodes"]
    gpu = build_command(LaunchConfig(comfyui_dir=Path("/c"), python="py",
                                     work_dir=Path("/w")), 1, lambda flag: True)
    assert "--cpu" not in gpu and "--database-url" in gpu


def test_flag_support_is_read_from_the_checkouts_cli_args(tmp_path: Path) -> None:
    root = fake_comfyui(tmp_path, "", 'parser.add_argument("--user-directory", type=str)')
    supports = cli_flag_checker(root)
    assert supports("--user-directory") and not supports("--database-url")


def test_death_message_guesses_oom_on_sigkill_and_shows_the_last_lines() -> None:
    msg = death_message(-signal.SIGKILL, ["a", "b"], during="while running a job")
    assert msg == ("ComfyUI was killed by SIGKILL (out of memory? the kernel's OOM killer "
                   "sends SIGKILL) while running a job; last log lines:\n  | a\n  | b")
    assert death_message(2, [], during="while starting") == \
        "ComfyUI exited with status 2 while starting"


def test_start_waits_for_system_stats_then_stop_terminates(tmp_path: Path) -> None:
    proc = ComfyProcess(config(fake_comfyui(tmp_path, SERVING_MAIN), tmp_path, cpu=True))
    assert proc.state is State.NEW
    proc.start()
    try:
        assert proc.state is State.READY and proc.alive()
        assert requests.get(proc.base_url + "/system_stats", timeout=5).status_code == 200
        assert any("--cpu" in line for line in proc.log_tail())
        for d in ("input", "output", "temp", "user"):
            assert (tmp_path / "work" / d).is_dir()
        with pytest.raises(ComfyStartError, match="state is READY"):
            proc.start()
    finally:
        proc.stop()
    assert proc.state is State.STOPPED and not proc.alive()
    assert "Starting server" in (tmp_path / "work" / "comfyui.log").read_text()


def test_process_that_dies_is_restarted_on_a_new_pid(tmp_path: Path) -> None:
    proc = ComfyProcess(config(fake_comfyui(tmp_path, SERVING_MAIN), tmp_path))
    proc.start()
    try:
        first_pid, first_gen = proc.pid, proc.generation
        proc.kill()
        deadline = time.monotonic() + 30
        while proc.generation == first_gen or proc.state is not State.READY:
            assert time.monotonic() < deadline, "no restart"
            time.sleep(0.05)
        proc.wait_ready(10)
        assert proc.pid != first_pid and proc.restarts == 1
        assert requests.get(proc.base_url + "/system_stats", timeout=5).status_code == 200
    finally:
        proc.stop()
    with pytest.raises(ComfyDied, match="stopped"):
        proc.wait_ready(1)


def test_crash_during_boot_fails_fast_with_the_last_log_lines(tmp_path: Path) -> None:
    proc = ComfyProcess(config(fake_comfyui(tmp_path, CRASHING_MAIN), tmp_path,
                               boot_timeout=60))
    started = time.monotonic()
    with pytest.raises(ComfyStartError) as err:
        proc.start()
    assert time.monotonic() - started < 10
    assert "exited with status 3 while starting" in err.value.message
    assert "No module named 'kornia'" in err.value.message
    assert proc.state is State.DEFUNCT


def test_no_answer_within_boot_timeout_kills_it(tmp_path: Path) -> None:
    proc = ComfyProcess(config(fake_comfyui(tmp_path, SILENT_MAIN), tmp_path,
                               boot_timeout=1.5, stop_grace=2))
    with pytest.raises(ComfyStartError, match=r"did not answer /system_stats within 2 s"):
        proc.start()
    assert not proc.alive()
    assert "loading..." in (tmp_path / "work" / "comfyui.log").read_text()


def test_missing_main_py_names_comfyui_dir(tmp_path: Path) -> None:
    proc = ComfyProcess(config(tmp_path / "nowhere", tmp_path))
    with pytest.raises(ComfyStartError, match=r"has no main\.py") as err:
        proc.start()
    assert "setup_comfyui.sh" in (err.value.hint or "")


def test_a_planned_restart_replaces_a_ready_comfyui_and_waiters_get_the_new_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    proc = ComfyProcess(config(fake_comfyui(tmp_path, SERVING_MAIN), tmp_path))
    proc.start()
    try:
        first_pid, first_gen = proc.pid, proc.generation
        caplog.set_level("INFO")
        proc.restart("3 job(s) since it started")
        assert proc.state is State.STARTING  # at once: the next job must wait
        with pytest.raises(ComfyStartError, match="state is STARTING"):
            proc.restart("again")  # only a READY ComfyUI is restarted
        proc.wait_ready(30)
        assert proc.pid != first_pid and proc.generation == first_gen + 1
        assert proc.restarts == 1
        assert requests.get(proc.base_url + "/system_stats", timeout=5).status_code == 200
        assert "restarting ComfyUI between jobs: 3 job(s) since it started" in caplog.text
        assert "unexpectedly" not in caplog.text  # a planned restart is not a death
    finally:
        proc.stop()


def test_recycle_rules() -> None:
    from comfy_worker.comfy.recycle import parse_vm_rss, restart_reason

    assert restart_reason(jobs_done=5, rss_bytes=None, after_jobs=0, max_rss=0) is None
    assert restart_reason(jobs_done=2, rss_bytes=None, after_jobs=3, max_rss=0) is None
    reason = restart_reason(jobs_done=3, rss_bytes=None, after_jobs=3, max_rss=0)
    assert reason is not None and "COMFY_WORKER_RESTART_AFTER_JOBS=3" in reason
    assert restart_reason(jobs_done=1, rss_bytes=2 * 2**30, after_jobs=0,
                          max_rss=2 * 2**30) is None
    reason = restart_reason(jobs_done=1, rss_bytes=3 * 2**30, after_jobs=0, max_rss=2 * 2**30)
    assert reason is not None and "3072 MiB" in reason and "MAX_COMFY_RSS" in reason
    assert parse_vm_rss("Name:\tpython\nVmRSS:\t  524288 kB\nVmSwap: 0 kB\n") == 512 * 2**20
    assert parse_vm_rss("Name: x\n") is None


def versioned_main(version: str, *, cancel_route: bool) -> str:
    """A stand-in ComfyUI that reports ``version`` and has (or lacks) the per-prompt
    cancel route."""
    stats = '{"system": {"comfyui_version": "VERSION"}}'.replace("VERSION", version)
    post = """    def do_POST(self):
        ok = ROUTE and self.path.startswith("/api/jobs/") and self.path.endswith("/cancel")
        body = b'{"cancelled": false}' if ok else b"404: Not Found"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
""".replace("ROUTE", str(cancel_route))
    return SERVING_MAIN.replace('{"system": {}}', stats).replace(
        "    def log_message", post + "    def log_message")


def test_comfyuis_version_and_features_are_read_when_it_is_ready(tmp_path: Path) -> None:
    new = ComfyProcess(config(fake_comfyui(tmp_path / "new", versioned_main(
        "0.33.0", cancel_route=True)), tmp_path / "new", boot_timeout=20))
    old = ComfyProcess(config(fake_comfyui(tmp_path / "old", versioned_main(
        "0.3.75", cancel_route=False)), tmp_path / "old", boot_timeout=20))
    try:
        new.start()
        old.start()
        assert new.features.to_json() == {"version": "0.33.0", "cancel_by_id": True}
        assert old.features.to_json() == {"version": "0.3.75", "cancel_by_id": False}
    finally:
        new.stop()
        old.stop()


@pytest.mark.parametrize("version", ["0.3.74", "0.2.7", "v0.3.10"])
def test_a_comfyui_older_than_the_minimum_is_refused_naming_both_versions(
        tmp_path: Path, version: str) -> None:
    proc = ComfyProcess(config(fake_comfyui(tmp_path, versioned_main(
        version, cancel_route=False)), tmp_path, boot_timeout=20))
    with pytest.raises(ComfyVersionUnsupported) as info:
        proc.start()
    message = str(info.value)
    assert f"ComfyUI {version} is older than 0.3.75" in message and "COMFYUI_DIR" in message
    assert info.value.reference == "comfyui-version-unsupported"
    assert not proc.alive()  # the refused process does not linger


@pytest.mark.parametrize(("text", "parsed"), [
    ("0.33.0", (0, 33, 0)), ("v0.3.75", (0, 3, 75)), ("0.38.1-rc2", (0, 38, 1)),
    ("", None), ("dev", None), (None, None), (3, None)])
def test_version_parsing(text: object, parsed: tuple[int, int, int] | None) -> None:
    assert parse_version(text) == parsed
    assert unsupported_reason(text if isinstance(text, str) else None) is None or (
        parsed is not None and parsed < MIN_VERSION)
