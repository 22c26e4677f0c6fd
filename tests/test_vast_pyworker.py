"""The real vastai PyWorker, in its own virtualenv, in front of our real HTTP API.

The virtualenv is built by scripts/install_vast_pyworker.sh (vastai 1.9.1 from PyPI;
the first run takes ~25 s, later runs reuse ./.vast-pyworker). Skipped, saying why, when
PyPI cannot be reached (failed under CI=true). The Vast autoscaler is played by a local
HTTP server: it serves the public key of an RSA key pair made here at ``/pubkey/``
(vastai fetches the key from ``$REPORT_ADDR/pubkey/``) and records ``/worker_status/``
reports, so the test can sign requests the way the autoscaler does. The model server's
Worker is the scripted test double from test_http_api_helpers.py (start-up gated, jobs
echo), so the ready line can be checked against /health; each test takes ~3-10 s
(marked slow; runs in CI).
"""

from __future__ import annotations

import base64
import datetime
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from test_http_api_helpers import ScriptedWorker, wait_for

from comfy_worker.comfy.launch import free_port
from comfy_worker.config import Settings
from comfy_worker.entrypoints.vast import FATAL_LINE, PYWORKER_SCRIPT, READY_LINE, run_vast
from comfy_worker.errors import ModelHashMismatch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


class Autoscaler:
    """The parts of Vast's autoscaler a PyWorker talks to: /pubkey/, /worker_status/."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.statuses: list[dict[str, Any]] = []
        self.deleted: list[dict[str, Any]] = []
        self.csrs: list[tuple[str, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/pubkey/":
                    self._answer(200, outer.pem)
                else:
                    self._answer(404, b"")

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path.startswith("/sign_cert/"):
                    outer.csrs.append((self.path, raw))
                    self._answer(200, outer.sign_csr(raw))
                    return
                body = json.loads(raw)
                if self.path == "/worker_status/":
                    outer.statuses.append(body)
                elif self.path == "/delete_requests/":
                    outer.deleted.append(body)
                self._answer(200, b"{}")

            def _answer(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def sign(self, url: str) -> str:
        """How the autoscaler signs a request for a worker (vastai's __check_signature)."""
        message = json.dumps({"url": url}, indent=4, sort_keys=True).encode()
        return base64.b64encode(self.key.sign(message, padding.PKCS1v15(),
                                              hashes.SHA256())).decode()

    def sign_csr(self, pem: bytes) -> bytes:
        """What console.vast.ai/api/v0/sign_cert/ does: a certificate for the CSR's key."""
        csr = x509.load_pem_x509_csr(pem)
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(csr.subject)
                .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")]))
                .public_key(csr.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                .sign(self.key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM)

    def loaded(self) -> bool:
        return any(s["loadtime"] > 0 and not s["error_msg"] for s in self.statuses)



class Stack:
    def __init__(self, worker: ScriptedWorker, settings: Settings, autoscaler: Autoscaler,
                 worker_port: int) -> None:
        self.worker = worker
        self.settings = settings
        self.autoscaler = autoscaler
        self.pyworker = f"http://127.0.0.1:{worker_port}"
        self.servers: list[Any] = []
        self.result: list[int] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_for(lambda: bool(self.servers) and self.servers[0].started)
        sock = self.servers[0].servers[0].sockets[0]
        self.api = f"http://127.0.0.1:{sock.getsockname()[1]}"

    def _run(self) -> None:
        self.result.append(run_vast(self.worker, self.settings, on_server=self.servers.append))

    def model_log(self) -> list[str]:
        return self.settings.vast_model_log.read_text().splitlines()

    def post(self, payload: dict[str, Any], *, signature: str | None, reqnum: int,
             url: str = "https://run.vast.ai/route/abc") -> requests.Response:
        auth = {"cost": "100", "endpoint": "comfy", "reqnum": reqnum, "request_idx": reqnum,
                "url": url,
                "signature": signature if signature is not None else "bm90IGEgc2lnbmF0dXJl"}
        return requests.post(f"{self.pyworker}/generate/sync",
                             json={"auth_data": auth, "payload": payload}, timeout=30)

    def stop(self) -> None:
        self.worker.start_gate.set()
        self.servers[0].should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def stack(vast_python: str, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    autoscaler = Autoscaler()
    stacks: list[Stack] = []

    def make(worker: ScriptedWorker) -> Stack:
        worker_port = free_port()
        for name, value in {
            "WORKER_PORT": str(worker_port), "WORKER_HTTP_PORT": str(free_port()),
            "REPORT_ADDR": autoscaler.url, "CONTAINER_ID": "4242",
            "PUBLIC_IPADDR": "127.0.0.1", f"VAST_TCP_PORT_{worker_port}": str(worker_port),
            "MASTER_TOKEN": "test-master-token", "USE_SSL": "false",
            # vastai would skip signature checks; comfy-worker must turn them back on.
            "UNSECURED": "true",
        }.items():
            monkeypatch.setenv(name, value)
        settings = Settings(port=0, vast_python=vast_python,
                            vast_model_log=tmp_path / "vast" / "model.log",
                            vast_benchmark_runs=2)
        s = Stack(worker, settings, autoscaler, worker_port)
        stacks.append(s)
        return s

    yield make
    for s in stacks:
        s.stop()
    autoscaler.server.shutdown()


def test_pyworker_waits_for_health_then_refuses_unsigned_and_forwards_signed(
        stack: Any) -> None:
    worker = ScriptedWorker(started=False)
    s: Stack = stack(worker)
    # Start-up in progress: /health is 503 and the model log has no ready line.
    wait_for(lambda: worker.phase == "syncing models")
    wait_for(lambda: any(line.startswith("comfy-worker: starting") for line in s.model_log()))
    time.sleep(2)  # time for the PyWorker to read the log and report
    assert requests.get(f"{s.api}/health", timeout=5).status_code == 503
    assert READY_LINE not in s.model_log()
    assert worker.calls == []  # no benchmark before ready
    assert not s.autoscaler.loaded()

    # An unsigned request is refused even though UNSECURED=true is set.
    unsigned = s.post({"input": {"label": "unsigned"}}, signature=None, reqnum=1)
    assert unsigned.status_code == 401
    no_auth = requests.post(f"{s.pyworker}/generate/sync",
                            json={"payload": {"label": "no-auth"}}, timeout=10)
    assert no_auth.status_code == 422

    worker.start_gate.set()
    wait_for(lambda: READY_LINE in s.model_log(), timeout=30)
    assert requests.get(f"{s.api}/health", timeout=5).status_code == 200
    # The PyWorker benchmarks (1 warm-up + 2 runs) through our API, then reports loaded.
    wait_for(s.autoscaler.loaded, timeout=60)
    assert worker.calls == [None, None, None]
    loaded = next(st for st in s.autoscaler.statuses if st["loadtime"] > 0)
    assert loaded["max_perf"] > 0
    assert loaded["id"] == 4242

    signed_url = "https://run.vast.ai/route/xyz"
    ok = s.post({"input": {"label": "signed"}}, signature=s.autoscaler.sign(signed_url),
                reqnum=2, url=signed_url)
    assert ok.status_code == 200, ok.text
    assert ok.json()["echo"] == {"label": "signed"}
    # A signature for another URL does not verify.
    forged = s.post({"label": "forged"}, signature=s.autoscaler.sign("https://other"),
                    reqnum=3, url=signed_url)
    assert forged.status_code == 401
    # A job's own failure is forwarded with its status and never marks the worker errored.
    bad = s.post({"fail": "WorkflowInvalid"}, signature=s.autoscaler.sign(signed_url),
                 reqnum=4, url=signed_url)
    assert bad.status_code == 422
    assert bad.json()["error"] == "scripted failure WorkflowInvalid"
    assert worker.calls == [None, None, None, "signed", None]
    time.sleep(1.5)
    assert all(not st["error_msg"] for st in s.autoscaler.statuses)
    assert not [line for line in s.model_log() if FATAL_LINE in line]


def test_fatal_start_up_failure_is_reported_to_the_autoscaler_as_errored(stack: Any) -> None:
    error = ModelHashMismatch("checkpoints/x.safetensors: sha256 mismatch",
                              hint="re-run comfy-worker lock add")
    s: Stack = stack(ScriptedWorker(start_error=error))
    wait_for(lambda: any(FATAL_LINE in line for line in s.model_log()), timeout=30)
    fatal = next(line for line in s.model_log() if FATAL_LINE in line)
    assert fatal == (f"{FATAL_LINE}: checkpoints/x.safetensors: sha256 mismatch "
                     "hint: re-run comfy-worker lock add")
    wait_for(lambda: any(st["error_msg"] == FATAL_LINE for st in s.autoscaler.statuses),
             timeout=30)
    assert READY_LINE not in s.model_log()
    health = requests.get(f"{s.api}/health", timeout=5)
    assert health.status_code == 503
    assert health.json()["reason"].startswith("start-up failed: checkpoints/x.safetensors")
    s.stop()
    assert s.result == [1]


def test_use_ssl_instance_certificate_is_signed_like_vasts_start_script(
        vast_python: str, tmp_path: Path) -> None:
    autoscaler = Autoscaler()
    cert, key = tmp_path / "etc" / "instance.crt", tmp_path / "etc" / "instance.key"
    call = ("import runpy, sys; from pathlib import Path; "
            f"m = runpy.run_path({str(PYWORKER_SCRIPT)!r}); "
            "print(m['ensure_instance_cert'](Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]))")
    url = autoscaler.url + "/sign_cert/?instance_id=4242"
    try:
        first = subprocess.run([vast_python, "-I", "-c", call, str(cert), str(key), url],
                               capture_output=True, text=True, timeout=60)
        again = subprocess.run([vast_python, "-I", "-c", call, str(cert), str(key), url],
                               capture_output=True, text=True, timeout=60)
    finally:
        autoscaler.server.shutdown()
    assert (first.stdout.strip(), again.stdout.strip()) == ("True", "False"), first.stderr
    assert [path for path, _ in autoscaler.csrs] == ["/sign_cert/?instance_id=4242"]
    csr = x509.load_pem_x509_csr(autoscaler.csrs[0][1])
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == \
        "pyworker.vast.ai"
    issued = x509.load_pem_x509_certificate(cert.read_bytes())
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert issued.public_key().public_numbers() == private.public_key().public_numbers()
    assert key.stat().st_mode & 0o777 == 0o600
