"""The URL policy's pure parts: every address range it refuses, the operator's
exceptions, the early URL check, and the one redaction of the package."""

from __future__ import annotations

import ipaddress

import pytest

from comfy_worker.config import load_settings
from comfy_worker.errors import ConfigError, UrlNotAllowed
from comfy_worker.net.policy import (
    REFUSED_V4,
    REFUSED_V6,
    UrlPolicy,
    address_kind,
    url_not_allowed,
)
from comfy_worker.net.redact import UNPARSEABLE, redact_text, redact_url

DEFAULT = UrlPolicy()


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


# --- address classification ------------------------------------------------------------


@pytest.mark.parametrize(("address", "kind"), [
    ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"),
    ("10.0.0.1", "private"), ("10.255.255.255", "private"),
    ("100.64.0.1", "shared (CGNAT)"), ("100.127.255.254", "shared (CGNAT)"),
    ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"),
    ("169.254.169.254", "link-local"), ("169.254.0.1", "link-local"),
    ("172.16.0.1", "private"), ("172.31.255.255", "private"),
    ("192.0.0.8", "reserved"), ("192.0.2.10", "documentation"),
    ("192.88.99.1", "reserved"),
    ("192.168.1.1", "private"),
    ("198.18.0.1", "benchmarking"), ("198.19.255.1", "benchmarking"),
    ("198.51.100.7", "documentation"), ("203.0.113.9", "documentation"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"),
])
def test_every_non_public_ipv4_range_is_refused_with_its_kind(address: str, kind: str) -> None:
    assert address_kind(ip(address)) == kind
    refusal = DEFAULT.refusal(ip(address))
    assert refusal is not None and refusal.kind == kind and refusal.address == address


@pytest.mark.parametrize(("address", "kind"), [
    ("::", "unspecified"), ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:10.1.2.3", "private"), ("::ffff:100.64.1.1", "shared (CGNAT)"),
    ("::ffff:224.0.0.5", "multicast"), ("::ffff:0.0.0.0", "unspecified"),
    ("64:ff9b::7f00:1", "loopback"), ("64:ff9b::a9fe:a9fe", "link-local"),
    ("2002:7f00:1::1", "loopback"), ("2002:c0a8:101::1", "private"),
    ("::127.0.0.1", "reserved"), ("64:ff9b:1::1", "private"), ("100::1", "reserved"),
    ("2001::1", "reserved"), ("2001:db8::1", "documentation"),
    ("fc00::1", "private"), ("fd12:3456::1", "private"),
    ("fe80::1", "link-local"), ("febf::1", "link-local"), ("fec0::1", "private"),
    ("ff02::1", "multicast"), ("ff0e::1", "multicast"),
    ("4000::1", "reserved"), ("1000::1", "reserved"),
])
def test_every_non_public_ipv6_range_is_refused_ipv4_inside_ipv6_by_its_ipv4(
        address: str, kind: str) -> None:
    assert address_kind(ip(address)) == kind
    assert DEFAULT.refusal(ip(address)) is not None


@pytest.mark.parametrize("address", [
    "8.8.8.8", "1.1.1.1", "93.184.215.14", "100.63.255.255", "100.128.0.1",
    "172.15.255.255", "172.32.0.1", "192.167.255.255", "169.253.0.1", "223.255.255.254",
    "2606:4700:4700::1111", "2a00:1450:4001:80b::200e", "::ffff:8.8.8.8",
    "64:ff9b::808:808", "2002:808:808::1",
])
def test_public_unicast_addresses_are_allowed(address: str) -> None:
    assert address_kind(ip(address)) is None
    assert DEFAULT.refusal(ip(address)) is None


def test_the_tables_name_the_ranges_the_issue_lists() -> None:
    kinds = {kind for _net, kind in REFUSED_V4} | {kind for _net, kind in REFUSED_V6}
    assert {"loopback", "link-local", "private", "shared (CGNAT)", "multicast",
            "unspecified"} <= kinds


# --- the operator's exceptions -----------------------------------------------------------


def test_allowed_networks_open_exactly_their_addresses_ipv4_mapped_included() -> None:
    policy = UrlPolicy.of(["10.1.0.0/16", "127.0.0.1", "fd00::/8"])
    assert policy.refusal(ip("10.1.2.3")) is None
    assert policy.refusal(ip("::ffff:10.1.2.3")) is None  # the same host, mapped
    assert policy.refusal(ip("127.0.0.1")) is None
    assert policy.refusal(ip("fd00::5")) is None
    assert policy.refusal(ip("10.2.0.1")) is not None
    assert policy.refusal(ip("127.0.0.2")) is not None
    assert policy.refusal(ip("169.254.169.254")) is not None


def test_allowed_host_names_are_exact_or_a_wildcard_suffix() -> None:
    policy = UrlPolicy.of(["models.internal", "*.corp.example"])
    assert policy.host_allowed("models.internal") and policy.host_allowed("MODELS.internal.")
    assert policy.host_allowed("a.corp.example") and policy.host_allowed("a.b.corp.example")
    assert not policy.host_allowed("corp.example")
    assert not policy.host_allowed("xmodels.internal")
    assert not policy.host_allowed("evilcorp.example")
    assert policy.check_url("http://models.internal:9000/m.safetensors") is None


def test_the_setting_is_parsed_by_the_settings_table() -> None:
    settings = load_settings(env={"COMFY_WORKER_URL_ALLOW":
                                  " 10.0.0.0/8, models.internal ,,[fd00::1], *.corp.example"})
    policy = UrlPolicy.of(settings.url_allow)
    assert policy.refusal(ip("10.9.9.9")) is None
    assert policy.refusal(ip("fd00::1")) is None and policy.refusal(ip("fd00::2")) is not None
    assert policy.host_allowed("models.internal") and policy.host_allowed("x.corp.example")
    assert load_settings(env={}).url_allow == ()


@pytest.mark.parametrize("raw", ["10.0.0.0/33", "http://x", "a b", "-bad.example", "x/y",
                                 "1.2.3.4/8/9", "*.", "under_score.example"])
def test_a_bad_allow_item_is_a_config_error_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env={"COMFY_WORKER_URL_ALLOW": f"10.0.0.0/8,{raw}"})
    assert "COMFY_WORKER_URL_ALLOW" in str(err.value)


# --- the early check (no DNS) --------------------------------------------------------


@pytest.mark.parametrize(("url", "reason"), [
    ("file:///etc/passwd", 'scheme "file"'),
    ("ftp://example.org/x", 'scheme "ftp"'),
    ("gopher://example.org/x", 'scheme "gopher"'),
    ("//example.org/x", "no http:// or https:// scheme"),
    ("http://127.0.0.1:8188/prompt", "127.0.0.1 is a loopback address"),
    ("http://[::1]:8188/", "::1 is a loopback address"),
    ("http://[::ffff:127.0.0.1]/", "::ffff:7f00:1 is a loopback address"),
    ("http://169.254.169.254/latest/meta-data/", "a link-local address"),
    ("https://user:pw@10.0.0.5/x", "10.0.0.5 is a private address"),
    ("http://0.0.0.0:8000/", "an unspecified address"),
    ("http://[fe80::1%25eth0]/", "a link-local address"),
    ("http:///x", "no host"),
])
def test_the_early_check_refuses_other_schemes_and_literal_addresses(
        url: str, reason: str) -> None:
    refusal = DEFAULT.check_url(url)
    assert refusal is not None and reason in refusal.reason


@pytest.mark.parametrize("url", ["https://huggingface.co/x", "http://example.org:8080/a?b=c",
                                 "https://8.8.8.8/x", "https://[2606:4700::1111]/x",
                                 "http://localhost:1/"])
def test_the_early_check_passes_public_addresses_and_names(url: str) -> None:
    # ("localhost" is a name: it is judged by the address it resolves to, when connecting)
    assert DEFAULT.check_url(url) is None


def test_a_refusal_names_the_field_the_url_redacted_why_and_the_setting() -> None:
    url = "http://user:hunter2@127.0.0.1:9000/m.safetensors?X-Amz-Signature=SECRET"
    refusal = DEFAULT.check_url(url)
    assert refusal is not None
    err = url_not_allowed('models[0] ("loras/a.safetensors"): field "source.url"', url,
                          refusal)
    assert isinstance(err, UrlNotAllowed)
    assert err.status == 422 and err.reference == "url-not-allowed"
    text = str(err) + repr(err.to_json())
    assert 'models[0] ("loras/a.safetensors"): field "source.url"' in err.message
    assert "http://127.0.0.1:9000/m.safetensors" in err.message
    assert "loopback" in err.message and "COMFY_WORKER_URL_ALLOW" in (err.hint or "")
    assert "SECRET" not in text and "hunter2" not in text and "user" not in text
    assert err.details == [{"url": "http://127.0.0.1:9000/m.safetensors",
                            "setting": "COMFY_WORKER_URL_ALLOW", "address": "127.0.0.1",
                            "kind": "loopback"}]


def test_a_name_that_resolved_to_a_refused_address_is_named_with_it() -> None:
    refusal = DEFAULT.refusal(ip("10.0.0.7"))
    assert refusal is not None
    err = url_not_allowed('images[0] ("a.png"): field "url"', "http://rebind.example/a.png",
                          refusal, host="rebind.example")
    assert err.message == ('images[0] ("a.png"): field "url": http://rebind.example/a.png is '
                           "not allowed: rebind.example resolves to 10.0.0.7, a private "
                           "address")


# --- redaction ------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "shown"), [
    ("https://bucket.s3.amazonaws.com/k/m.safetensors?X-Amz-Signature=abc&X-Amz-Credential=x",
     "https://bucket.s3.amazonaws.com/k/m.safetensors"),
    ("https://user:pass@host.example:8443/p/a.png?sig=x#frag", "https://host.example:8443/p/a.png"),
    ("http://[2001:db8::1]:8080/x?token=t", "http://[2001:db8::1]:8080/x"),
    ("http://[::1]/x", "http://[::1]/x"),
    ("http://tok@[fe80::1%25eth0]:9/x", "http://[fe80::1%25eth0]:9/x"),
    ("HTTPS://Host.Example/Path", "https://Host.Example/Path"),
    ("http://h/a\x1b[31mred\x07?q", "http://h/a%1B[31mred%07"),
    ("http://h:notaport/x", UNPARSEABLE),
    ("http://[::1/x", UNPARSEABLE),
    ("not a url", UNPARSEABLE),
])
def test_redact_url_keeps_the_place_and_drops_every_secret(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_text_redacts_every_url_in_a_library_message() -> None:
    text = ("HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: "
            "/m.safetensors?X-Amz-Signature=SECRET (Caused by NewConnectionError('x')) "
            "from https://u:pw@cdn.example/a?token=SECRET2, then http://[::1]:9/b?c=SECRET3")
    out = redact_text(text)
    assert "SECRET" not in out and "pw@" not in out
    assert "url: /m.safetensors (Caused by" in out
    assert "https://cdn.example/a" in out and "http://[::1]:9/b" in out
