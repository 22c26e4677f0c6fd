"""Input images by URL, fetched from a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest
from support.hostile_server import HostileServer, Route

from comfy_worker.errors import InputFetchFailed, JobCancelled, JobTimeout, UrlNotAllowed
from comfy_worker.job.inputs import fetch_url_images
from comfy_worker.job.request import InputImage
from comfy_worker.net.policy import UrlPolicy

LOCAL = UrlPolicy.of(["127.0.0.1/32"])
"""The test server's address, opened as an operator would (the default refuses it)."""

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
                                timeout=timeout, policy=LOCAL)
    return image


def test_a_url_image_is_fetched_and_base64_images_are_left_alone(base: str) -> None:
    images = fetch_url_images([InputImage("x.png", b"given"),
                               InputImage("in.png", url=f"{base}/a.png?sig=1")],
                              max_bytes=100_000, timeout=5, policy=LOCAL)
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
    with pytest.raises(InputFetchFailed, match=r"not fetched within 0.5 s \(10 bytes") as err:
        fetch(f"{base}/stall", timeout=0.5)
    assert time.monotonic() - t0 < 2.5
    assert "COMFY_WORKER_INPUT_URL_TIMEOUT" in (err.value.hint or "")


def test_an_unreachable_host_is_a_clear_error() -> None:
    with pytest.raises(InputFetchFailed, match="ConnectionError"):
        fetch("http://127.0.0.1:9/x.png", timeout=1)


# --- a stranger's image URLs (issue 16): the policy, deadlines, cancel, a bounded pool ---


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with HostileServer("127.0.0.1") as server:
        yield server


def test_by_default_a_loopback_image_url_is_refused_and_nothing_is_asked(
        hostile: HostileServer) -> None:
    url = hostile.add("a.png", Route(data=PNG))
    for shown in (url, url.replace("127.0.0.1", "localhost")):
        with pytest.raises(UrlNotAllowed) as err:
            fetch_url_images([InputImage("in.png", url=shown + "?sig=SECRET")],
                             max_bytes=100_000, timeout=5)
        assert err.value.message.startswith('images[0] ("in.png"): field "url": ')
        assert "loopback" in err.value.message and "SECRET" not in str(err.value)
    assert hostile.requests() == []


def test_a_redirect_to_an_internal_address_is_refused(hostile: HostileServer) -> None:
    with HostileServer("127.0.0.2") as internal:
        inside = internal.add("latest/meta-data", Route(data=b"role credentials"))
        hop = hostile.add("a.png", Route(redirect=inside))
        with pytest.raises(UrlNotAllowed, match=r"\(redirected\).*127\.0\.0\.2"):
            fetch(hop)
        assert internal.requests() == []


@pytest.mark.parametrize(("routes", "says"), [
    ({"a.png": Route(redirect="/b.png"), "b.png": Route(redirect="/a.png")},
     "its redirects loop"),
    ({"a.png": Route(redirect="file:///etc/passwd")}, 'redirects to a "file" URL'),
])
def test_redirects_that_cannot_be_followed_are_the_callers_error(
        hostile: HostileServer, routes: dict[str, Route], says: str) -> None:
    for name, route in routes.items():
        hostile.add(name, route)
    with pytest.raises(InputFetchFailed) as err:
        fetch(f"{hostile.base}/a.png")
    assert says in err.value.message and err.value.status == 422
    assert "give a URL that answers with the image itself" in (err.value.hint or "")


def test_a_dripping_server_is_cut_at_the_images_own_time(hostile: HostileServer) -> None:
    url = hostile.add("drip.png", Route(data=PNG, drip=0.2))
    t0 = time.monotonic()
    with pytest.raises(InputFetchFailed, match=r"not fetched within 1 s") as err:
        fetch(url, timeout=1)
    assert time.monotonic() - t0 < 2.5
    assert "COMFY_WORKER_INPUT_URL_TIMEOUT" in (err.value.hint or "")
    sent = hostile.sent("drip.png")
    time.sleep(0.6)
    assert hostile.sent("drip.png") - sent <= 1  # the connection was cut


def test_the_jobs_own_deadline_stops_every_fetch_with_a_job_timeout(
        hostile: HostileServer) -> None:
    url = hostile.add("drip.png", Route(data=PNG, drip=0.5))
    images = [InputImage(f"{i}.png", url=url) for i in range(3)]
    t0 = time.monotonic()
    with pytest.raises(JobTimeout) as err:
        fetch_url_images(images, max_bytes=100_000, timeout=60, policy=LOCAL,
                         deadline=t0 + 1.0, job_timeout=1.0)
    assert time.monotonic() - t0 < 2.0
    assert err.value.status == 504 and "while fetching its input images" in err.value.message
    sent = hostile.sent("drip.png")
    time.sleep(1.2)
    assert hostile.sent("drip.png") - sent <= 3


def test_a_cancelled_job_stops_its_fetches_at_once(hostile: HostileServer) -> None:
    url = hostile.add("stall.png", Route(data=PNG, stall_after=100, stall_seconds=60))
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(JobCancelled):
        fetch_url_images([InputImage("a.png", url=url)], max_bytes=100_000, timeout=60,
                         policy=LOCAL, cancel=cancel)
    assert time.monotonic() - t0 < 1.5


def test_many_images_at_a_stalling_url_use_a_bounded_pool(hostile: HostileServer) -> None:
    url = hostile.add("stall.png", Route(data=PNG, stall_after=10, stall_seconds=60))
    images = [InputImage(f"{i}.png", url=url) for i in range(40)]
    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    with pytest.raises(JobCancelled):
        fetch_url_images(images, max_bytes=100_000, timeout=60, policy=LOCAL, cancel=cancel)
    assert len(hostile.requests("stall.png")) == 4  # FETCHES_AT_ONCE, not 40
    threads = [t.name for t in threading.enumerate() if t.name.startswith("image-fetch")]
    deadline = time.monotonic() + 3
    while threads and time.monotonic() < deadline:
        time.sleep(0.05)
        threads = [t.name for t in threading.enumerate() if t.name.startswith("image-fetch")]
    assert threads == []  # and none lingers once the job is gone
