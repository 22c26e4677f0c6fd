"""Input images by URL, fetched from a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from comfy_worker.errors import InputFetchFailed
from comfy_worker.job.inputs import fetch_url_images
from comfy_worker.job.request import InputImage

PNG = b"\x89PNG\r\n\x1a\n" + b"x" * 5000


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/a.png":
            self._send(200, PNG)
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/a.png")
            self.end_headers()
        elif path == "/big-declared":
            self.send_response(200)
            self.send_header("Content-Length", str(10_000_000))
            self.end_headers()
        elif path == "/big-chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(40):
                chunk = b"y" * 1000
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/stall":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"z" * 10)
            self.wfile.flush()
            time.sleep(3)
        elif path == "/empty":
            self._send(200, b"")
        else:
            self._send(404, b"no")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def fetch(url: str, *, max_bytes: int = 100_000, timeout: float = 5.0) -> InputImage:
    (image,) = fetch_url_images([InputImage("in.png", url=url)], max_bytes=max_bytes,
                                timeout=timeout)
    return image


def test_a_url_image_is_fetched_and_base64_images_are_left_alone(base: str) -> None:
    images = fetch_url_images([InputImage("x.png", b"given"),
                               InputImage("in.png", url=f"{base}/a.png?sig=1")],
                              max_bytes=100_000, timeout=5)
    assert images[0] == InputImage("x.png", b"given")
    assert images[1].data == PNG and images[1].name == "in.png"


def test_redirects_are_followed(base: str) -> None:
    assert fetch(f"{base}/redirect").data == PNG


@pytest.mark.parametrize(("path", "fragment"), [
    ("/missing.png", "answered HTTP 404"),
    ("/big-declared", "10000000 bytes, over the 100000-byte limit"),
    ("/empty", "sent 0 bytes"),
])
def test_failures_name_the_image_and_the_url_without_its_query(
        base: str, path: str, fragment: str) -> None:
    with pytest.raises(InputFetchFailed) as err:
        fetch(f"{base}{path}?X-Amz-Signature=topsecret")
    message = str(err.value)
    assert fragment in message
    assert f'images[0] ("in.png") from {base}{path}' in message
    assert "topsecret" not in message and "Signature" not in message
    assert err.value.status == 422 and err.value.reference == "input-fetch-failed"


def test_a_body_without_length_is_capped_while_streaming(base: str) -> None:
    with pytest.raises(InputFetchFailed, match="more than 20000 bytes"):
        fetch(f"{base}/big-chunked", max_bytes=20_000)
    assert len(fetch(f"{base}/big-chunked", max_bytes=50_000).data) == 40_000


def test_a_stalled_server_times_out(base: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(InputFetchFailed, match=r"Timeout|ConnectionError") as err:
        fetch(f"{base}/stall", timeout=0.5)
    assert time.monotonic() - t0 < 2.5
    assert "COMFY_WORKER_INPUT_URL_TIMEOUT" in (err.value.hint or "")


def test_an_unreachable_host_is_a_clear_error() -> None:
    with pytest.raises(InputFetchFailed, match="ConnectionError"):
        fetch("http://127.0.0.1:9/x.png", timeout=1)
