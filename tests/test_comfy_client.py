"""comfy/client.py against a real HTTP server on 127.0.0.1 that records what it gets."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from comfy_worker.comfy.client import ComfyClient


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    bodies: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            answer = json.dumps({"prompt_id": "p1", "number": 0, "node_errors": {}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    finally:
        server.shutdown()
        server.server_close()


def test_a_prompt_carries_the_partner_key_as_extra_data_and_no_log_shows_it(
        recorder: tuple[str, list[dict[str, Any]]], caplog: pytest.LogCaptureFixture) -> None:
    url, bodies = recorder
    client = ComfyClient(url)
    caplog.set_level(logging.DEBUG)
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {}}}
    assert client.queue_prompt(prompt, "c1", {"api_key_comfy_org": "comfyui-SECRET"}
                               ).prompt_id == "p1"
    assert client.queue_prompt(prompt, "c1").prompt_id == "p1"
    client.close()
    assert bodies[0] == {"prompt": prompt, "client_id": "c1",
                         "extra_data": {"api_key_comfy_org": "comfyui-SECRET"}}
    assert bodies[1] == {"prompt": prompt, "client_id": "c1"}
    assert "comfyui-SECRET" not in caplog.text
