"""HTTP under the URL policy against real servers on loopback addresses: the policy is
applied to the address each connection goes to (after DNS, on every redirect hop), the
default refuses loopback, redirects are followed one checked hop at a time, and a
session's connections can be cut at once."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from support.hostile_server import HostileServer, Route

from comfy_worker.net.http import (
    MAX_REDIRECTS,
    AddressRefused,
    RedirectRefused,
    UrlRefused,
    open_url,
    session,
)
from comfy_worker.net.policy import UrlPolicy

DATA = bytes(range(256)) * 64
LOCAL = UrlPolicy.of(["127.0.0.1/32"])


@pytest.fixture
def srv() -> Iterator[HostileServer]:
    with HostileServer("127.0.0.1") as server:
        yield server


@pytest.fixture
def private() -> Iterator[HostileServer]:
    """Another loopback address (127.0.0.2): an "internal" server the policy refuses."""
    with HostileServer("127.0.0.2") as server:
        yield server


def get(url: str, policy: UrlPolicy | None, **kw: Any) -> requests.Response:
    http = session(policy)
    r = open_url(http, "GET", url, timeout=(5, 5), policy=policy, stream=False, **kw)
    http.close()
    return r


def test_the_default_policy_refuses_loopback_by_name_when_connecting(
        srv: HostileServer) -> None:
    url = srv.add("a.bin", Route(data=DATA)).replace("127.0.0.1", "localhost")
    with pytest.raises(AddressRefused) as err:
        get(url, UrlPolicy())
    assert err.value.host == "localhost"
    assert err.value.refusal.kind == "loopback"
    assert srv.requests() == []  # nothing was sent: refused before connecting


def test_the_default_policy_refuses_a_literal_loopback_before_connecting(
        srv: HostileServer) -> None:
    with pytest.raises(UrlRefused) as err:
        get(srv.add("a.bin", Route(data=DATA)), UrlPolicy())
    assert not err.value.redirected and err.value.refusal.kind == "loopback"
    assert srv.requests() == []


def test_an_allowed_network_is_fetched(srv: HostileServer) -> None:
    assert get(srv.add("a.bin", Route(data=DATA)), LOCAL).content == DATA


def test_a_redirect_hop_to_a_refused_address_is_refused_before_it_is_asked(
        srv: HostileServer, private: HostileServer) -> None:
    secret = private.add("meta", Route(data=b"instance credentials"))
    hop = srv.add("hop", Route(redirect=secret))
    with pytest.raises(UrlRefused) as err:
        get(hop, LOCAL)
    assert err.value.redirected and err.value.url == secret
    assert private.requests() == []


def test_the_address_judged_is_the_address_connected_to(
        srv: HostileServer, private: HostileServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A name is resolved once per connection and only an allowed answer is connected
    to: DNS cannot show a public face to a check and a private one to the connection."""
    srv.add("a.bin", Route(data=DATA))
    private.add("a.bin", Route(data=b"internal"))
    real = socket.getaddrinfo
    answers = {"both.test": ["127.0.0.2", "127.0.0.1"], "internal.test": ["127.0.0.2"]}
    asked: list[str] = []

    def fake(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            asked.append(host)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, int(port)))
                    for a in answers[host]]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    # two answers: only the allowed one is connected to (srv, not private)
    assert get(f"http://both.test:{srv.port}/a.bin", LOCAL).content == DATA
    # rebinding: the same name now answers only the refused address
    answers["both.test"] = ["127.0.0.2"]
    with pytest.raises(AddressRefused) as err:
        get(f"http://both.test:{private.port}/a.bin", LOCAL)
    assert err.value.refusal.address == "127.0.0.2"
    with pytest.raises(AddressRefused):
        get(f"http://internal.test:{private.port}/a.bin", LOCAL)
    assert private.requests() == []
    assert asked.count("both.test") == 2


def test_an_allowed_host_name_is_trusted_whatever_it_resolves_to(srv: HostileServer) -> None:
    url = srv.add("a.bin", Route(data=DATA)).replace("127.0.0.1", "localhost")
    assert get(url, UrlPolicy.of(["localhost"])).content == DATA


@pytest.mark.parametrize(("routes", "kind"), [
    ({"start": Route(redirect="file:///etc/passwd")}, "scheme"),
    ({"start": Route(redirect="gopher://127.0.0.1:70/x")}, "scheme"),
    ({"start": Route(redirect="/b"), "b": Route(redirect="/start")}, "loop"),
    ({"start": Route(redirect="/start")}, "loop"),
    ({"start": Route(redirect="/r1"),
      **{f"r{i}": Route(redirect=f"/r{i + 1}") for i in range(1, MAX_REDIRECTS + 2)}},
     "too-many"),
])
def test_redirects_that_cannot_be_followed_are_named(
        srv: HostileServer, routes: dict[str, Route], kind: str) -> None:
    for name, route in routes.items():
        srv.add(name, route)
    with pytest.raises(RedirectRefused) as err:
        get(f"{srv.base}/start", LOCAL)
    assert err.value.kind == kind
    assert len(srv.requests()) <= MAX_REDIRECTS + 1


def test_authorization_does_not_follow_a_redirect_to_another_origin(
        srv: HostileServer, private: HostileServer) -> None:
    private.add("cdn", Route(data=DATA))
    srv.add("same", Route(redirect="/hub"))
    srv.add("hub", Route(redirect=f"{private.base}/cdn"))
    policy = UrlPolicy.of(["127.0.0.1/32", "127.0.0.2/32"])
    r = get(f"{srv.base}/same", policy, headers={"Authorization": "Bearer t"})
    assert r.content == DATA
    assert [h.authorization for h in srv.requests()] == [True, True]
    assert [h.authorization for h in private.requests()] == [False]


def test_a_job_url_never_goes_through_an_environment_proxy_nor_takes_netrc_credentials(
        srv: HostileServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login operator password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert get(srv.add("a.bin", Route(data=DATA)), LOCAL).content == DATA
    assert [h.authorization for h in srv.requests()] == [False]


def test_abort_cuts_a_dripping_response_at_once(srv: HostileServer) -> None:
    url = srv.add("drip", Route(data=DATA, drip=0.5))
    http = session(LOCAL)
    r = open_url(http, "GET", url, timeout=(5, 30), policy=LOCAL)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            r.raw.read(len(DATA))
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    http.abort()
    reader.join(5)
    assert not reader.is_alive() and time.monotonic() - t0 < 1.0
    with pytest.raises(Exception):  # noqa: B017 - no new connection after abort
        open_url(http, "GET", url, timeout=(5, 5), policy=LOCAL)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_loopback_is_refused_by_default_and_opened_by_its_network() -> None:
    with HostileServer("::1") as v6:
        url = v6.add("a.bin", Route(data=DATA))
        assert url.startswith("http://[::1]:")
        with pytest.raises(UrlRefused):
            get(url, UrlPolicy())
        assert get(url, UrlPolicy.of(["::1/128"])).content == DATA
