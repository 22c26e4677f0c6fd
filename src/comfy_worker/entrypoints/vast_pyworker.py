"""The Vast.ai PyWorker for comfy-worker: a standalone program for its own virtualenv.

``vastai`` 1.9.1 pins cryptography==49.0.0 and pillow==12.2.0 while runpod needs
cryptography>=50, so this file imports only ``vastai`` and the standard library and runs
from the virtualenv that ``scripts/install_vast_pyworker.sh`` builds: ``comfy-worker
vast`` starts it by path as ``VENV/bin/python -I .../vast_pyworker.py`` (``-I`` keeps
this package's directory off ``sys.path``). It never imports ``comfy_worker``.

``comfy-worker vast`` (comfy_worker/entrypoints/vast.py) starts the local HTTP API as the
model server on 127.0.0.1 and then this program with everything it needs as arguments:
the model server's port, the model log it writes, the exact ready / fatal lines, and the
benchmark job input. This module reads no settings of its own; ``vastai`` reads the
platform's variables itself (WORKER_PORT, REPORT_ADDR, USE_SSL, CONTAINER_ID,
PUBLIC_IPADDR, VAST_TCP_PORT_*, MASTER_TOKEN).

TLS: like Vast's own start script, when ``USE_SSL=true`` and ``/etc/instance.crt`` /
``/etc/instance.key`` (the paths vastai loads) are missing, this program makes a key and
a CSR and has Vast sign it (``console.vast.ai/api/v0/sign_cert/?instance_id=$CONTAINER_ID``)
before starting. Like that script it defaults WORKER_PORT=3000 and USE_SSL=true when
they are unset; USE_SSL, CONTAINER_ID and WORKER_PORT are the only variables it reads.

Signature checking stays on: ``vastai`` disables it when UNSECURED=true; this program
turns it back on (and says so), so every request must carry an ``auth_data`` signed by
the autoscaler key that ``vastai`` fetches from ``$REPORT_ADDR/pubkey/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("comfy_worker_vast_pyworker")

ROUTE = "/generate/sync"
HEALTH_ROUTE = "/health"
CERT_PATH = Path("/etc/instance.crt")  # where vastai's server.py loads them from
KEY_PATH = Path("/etc/instance.key")
SIGN_CERT_URL = "https://console.vast.ai/api/v0/sign_cert/?instance_id={instance_id}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="comfy_worker_vast_pyworker",
        description="Vast.ai PyWorker in front of comfy-worker's local HTTP API.",
    )
    p.add_argument("--check", action="store_true",
                   help="import vastai's serverless worker, print its version, exit")
    p.add_argument("--model-server-port", type=int, help="port of the local HTTP API")
    p.add_argument("--model-log", type=Path, help="the model log to watch")
    p.add_argument("--ready-line", help="text of the line that means the model server is ready")
    p.add_argument("--error-line", help="text of the line that means start-up failed (fatal)")
    p.add_argument("--info-line", default=None, help="lines with this text are echoed")
    p.add_argument("--benchmark", type=Path, help="JSON job input the benchmark runs")
    p.add_argument("--benchmark-runs", type=int, default=3)
    p.add_argument("--max-queue-time", type=float, default=30.0,
                   help="seconds of estimated queue after which requests get 429")
    p.add_argument("--sign-cert-url", default=SIGN_CERT_URL,
                   help="where the instance CSR is signed when USE_SSL=true "
                        "({instance_id} is replaced by $CONTAINER_ID)")
    args = p.parse_args(argv)
    if not args.check:
        missing = [name for name in ("model_server_port", "model_log", "ready_line",
                                     "error_line", "benchmark")
                   if getattr(args, name) is None]
        if missing:
            p.error("missing " + ", ".join("--" + m.replace("_", "-") for m in missing))
    return args


def load_benchmark(path: Path) -> dict[str, Any]:
    payload = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: the benchmark job input must be a JSON object")
    return payload


def build_config(args: argparse.Namespace) -> Any:
    """The ``WorkerConfig``: one FIFO handler for /generate/sync with the benchmark."""
    from vastai.serverless.server.worker import (
        BenchmarkConfig,
        HandlerConfig,
        LogActionConfig,
        WorkerConfig,
    )

    benchmark = load_benchmark(args.benchmark)
    return WorkerConfig(
        model_server_url="http://127.0.0.1",
        model_server_port=args.model_server_port,
        model_log_file=str(args.model_log),
        model_healthcheck_url=HEALTH_ROUTE,
        handlers=[
            HandlerConfig(
                route=ROUTE,
                allow_parallel_requests=False,  # the model server runs one job at a time
                max_queue_time=args.max_queue_time,
                benchmark_config=BenchmarkConfig(
                    dataset=[benchmark], runs=args.benchmark_runs, concurrency=1,
                    do_warmup=True,
                ),
            )
        ],
        log_action_config=LogActionConfig(
            on_load=[args.ready_line],
            on_error=[args.error_line],
            on_info=[args.info_line] if args.info_line else [],
        ),
    )


def ensure_instance_cert(cert: Path, key: Path, sign_url: str, *, timeout: float = 60.0) -> bool:
    """Make ``key`` and have Vast sign a CSR into ``cert`` unless both exist. True if made.

    The same request Vast's start script makes with openssl + curl: an RSA-2048 key, a CSR
    for CN=pyworker.vast.ai with the IP SAN 0.0.0.0, POSTed as application/octet-stream;
    the answer is the PEM certificate.
    """
    if cert.is_file() and key.is_file():
        return False
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.COMMON_NAME, "pyworker.vast.ai"),
        ]))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("0.0.0.0"))]), critical=False)
        .sign(private, hashes.SHA256())
    )
    request = urllib.request.Request(
        sign_url, data=csr.public_bytes(serialization.Encoding.PEM), method="POST",
        headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        pem = response.read()
    x509.load_pem_x509_certificate(pem)  # refuse to write anything that is not a cert
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    key.chmod(0o600)
    cert.write_bytes(pem)
    return True


PLATFORM_DEFAULTS = {"WORKER_PORT": "3000", "USE_SSL": "true"}
"""What Vast's own start script (vast-ai/pyworker start_server.sh) assumes when unset."""


def platform_defaults(environ: Mapping[str, str]) -> dict[str, str]:
    """The Vast variables to set before vastai reads them: the unset ones of PLATFORM_DEFAULTS."""
    return {name: value for name, value in PLATFORM_DEFAULTS.items() if not environ.get(name)}


def enforce_signatures(worker: Any) -> None:
    """Keep autoscaler signature checks on even when UNSECURED=true was set."""
    if getattr(worker.backend, "unsecured", False):
        log.warning("UNSECURED=true ignored: comfy-worker always verifies the autoscaler's "
                    "request signatures")
    worker.backend.unsecured = False


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check:
        from importlib.metadata import version

        # Imported from its module: ``from vastai import Worker`` hides an ImportError
        # (e.g. distutils missing on Python 3.12 without setuptools) behind Worker = None.
        from vastai.serverless.server.worker import Worker

        print(f"vastai {version('vastai')}: {Worker.__module__}.{Worker.__name__} importable")
        return 0
    from vastai.serverless.server.worker import Worker

    for name, value in platform_defaults(os.environ).items():
        log.info("%s is not set: using %s (as Vast's start script does)", name, value)
        os.environ[name] = value
    # vastai's own test for TLS (server.py): USE_SSL == "true".
    if os.environ.get("USE_SSL", "false") == "true":
        url = args.sign_cert_url.format(instance_id=os.environ.get("CONTAINER_ID", ""))
        if ensure_instance_cert(CERT_PATH, KEY_PATH, url):
            log.info("TLS certificate for this instance signed and written to %s", CERT_PATH)
    worker = Worker(build_config(args))
    enforce_signatures(worker)
    log.info("PyWorker proxying %s to http://127.0.0.1:%d, watching %s",
             ROUTE, args.model_server_port, args.model_log)
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
