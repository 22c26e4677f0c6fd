"""Which URLs a job may make the worker fetch (pure): the URL policy.

A job's ``images[].url`` and ``models[].source.url`` are a stranger's URLs: by default
only ``http``/``https`` to **public unicast** addresses. Refused: unspecified, loopback,
link-local (the cloud metadata address 169.254.169.254 among them), private, shared
(CGNAT), multicast, and the reserved and documentation ranges, for IPv4 and IPv6 alike;
an IPv6 address that carries an IPv4 one (IPv4-mapped ``::ffff:a.b.c.d``, NAT64
``64:ff9b::/96``, 6to4 ``2002::/16``) is judged by that IPv4 address. The operator opens
exceptions with ``COMFY_WORKER_URL_ALLOW``: networks (CIDRs) and host names (exact, or
``*.suffix``), e.g. an internal model server.

The policy judges an address, not a name: :mod:`comfy_worker.net.http` applies it to the
address each connection actually goes to (after DNS, on every redirect hop), so a name
cannot resolve to a public address for a check and to a private one for the connection.
:meth:`UrlPolicy.check_url` is the early, DNS-free part (scheme, a literal IP, an allowed
name) run when a job is parsed. Locked sources (the operator's lock, ``HF_ENDPOINT``)
are not subject to it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from comfy_worker.config import AllowItem, allow_item, env_name
from comfy_worker.errors import UrlNotAllowed
from comfy_worker.net.redact import redact_url

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = ("http", "https")

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

REFUSED_V4: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_V4("0.0.0.0/8"), "unspecified"),
    (_V4("10.0.0.0/8"), "private"),
    (_V4("100.64.0.0/10"), "shared (CGNAT)"),
    (_V4("127.0.0.0/8"), "loopback"),
    (_V4("169.254.0.0/16"), "link-local"),
    (_V4("172.16.0.0/12"), "private"),
    (_V4("192.0.0.0/24"), "reserved"),
    (_V4("192.0.2.0/24"), "documentation"),
    (_V4("192.88.99.0/24"), "reserved"),
    (_V4("192.168.0.0/16"), "private"),
    (_V4("198.18.0.0/15"), "benchmarking"),
    (_V4("198.51.100.0/24"), "documentation"),
    (_V4("203.0.113.0/24"), "documentation"),
    (_V4("224.0.0.0/4"), "multicast"),
    (_V4("240.0.0.0/4"), "reserved"),  # and the broadcast address 255.255.255.255
)
"""IPv4 ranges a job may not reach, with what they are (IANA special-purpose registry)."""

REFUSED_V6: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_V6("::/128"), "unspecified"),
    (_V6("::1/128"), "loopback"),
    (_V6("::/96"), "reserved"),  # IPv4-compatible (deprecated)
    (_V6("64:ff9b:1::/48"), "private"),  # local-use NAT64
    (_V6("100::/64"), "reserved"),  # discard-only
    (_V6("2001::/23"), "reserved"),  # IETF protocol assignments (Teredo, ORCHID, ...)
    (_V6("2001:db8::/32"), "documentation"),
    (_V6("fc00::/7"), "private"),  # unique local
    (_V6("fe80::/10"), "link-local"),
    (_V6("fec0::/10"), "private"),  # site-local (deprecated)
    (_V6("ff00::/8"), "multicast"),
)
"""IPv6 ranges a job may not reach. Beyond them, anything outside the global unicast
range ``2000::/3`` is reserved."""

_GLOBAL_V6 = _V6("2000::/3")
_NAT64 = _V6("64:ff9b::/96")
_6TO4 = _V6("2002::/16")


def embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (IPv4-mapped, NAT64, 6to4), if any."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _6TO4:
        return ip.sixtofour
    return None


def address_kind(ip: IPAddress) -> str | None:
    """What kind of non-public address ``ip`` is (``loopback``, ``private``, ...), or
    None for a public unicast address."""
    inner = embedded_v4(ip)
    if inner is not None:
        return address_kind(inner)
    if isinstance(ip, ipaddress.IPv4Address):
        return next((kind for net, kind in REFUSED_V4 if ip in net), None)
    kind = next((kind for net, kind in REFUSED_V6 if ip in net), None)
    if kind is None and ip not in _GLOBAL_V6:
        return "reserved"
    return kind


def parse_address(text: str) -> IPAddress | None:
    """A literal IP address (``[v6]`` brackets and a ``%zone`` allowed), else None."""
    text = text.strip().strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _a(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


@dataclass(frozen=True)
class Refusal:
    """Why a URL or an address may not be fetched."""

    reason: str
    """A phrase for messages: ``127.0.0.1 is a loopback address``."""
    address: str | None = None
    kind: str | None = None


@dataclass(frozen=True)
class UrlPolicy:
    """Public unicast addresses only, plus the operator's exceptions."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: tuple[str, ...] = ()

    @classmethod
    def of(cls, items: Iterable[AllowItem | str]) -> UrlPolicy:
        """The policy with ``COMFY_WORKER_URL_ALLOW``'s items as exceptions (networks, or
        host names; text is parsed by :func:`comfy_worker.config.allow_item`)."""
        parsed = [allow_item(i) if isinstance(i, str) else i for i in items]
        return cls(tuple(p for p in parsed if not isinstance(p, str)),
                   tuple(p for p in parsed if isinstance(p, str)))

    def host_allowed(self, host: str) -> bool:
        """The operator allowed this host name (whatever it resolves to)."""
        name = host.strip().strip("[]").lower().rstrip(".")
        for allowed in self.hosts:
            if allowed.startswith("*."):
                if name.endswith(allowed[1:]):
                    return True
            elif name == allowed:
                return True
        return False

    def _allowed(self, ip: IPAddress) -> bool:
        candidates = [ip] + ([inner] if (inner := embedded_v4(ip)) is not None else [])
        return any(c.version == net.version and c in net
                   for c in candidates for net in self.networks)

    def refusal(self, ip: IPAddress) -> Refusal | None:
        """Why ``ip`` may not be connected to, or None when it may."""
        if self._allowed(ip):
            return None
        kind = address_kind(ip)
        if kind is None:
            return None
        return Refusal(f"{ip} is {_a(kind)} address", str(ip), kind)

    def check_url(self, url: str) -> Refusal | None:
        """The checks that need no DNS: the scheme, a literal IP host. None when the URL
        may be tried (a host name is judged by the address it resolves to, at connect
        time)."""
        try:
            parts = urlsplit(url.strip())
            host = parts.hostname or ""
        except ValueError:
            return Refusal("it is not a valid URL")
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            return Refusal(f'its scheme "{scheme}" is not http or https' if scheme
                           else "it has no http:// or https:// scheme")
        if not host:
            return Refusal("it names no host")
        if self.host_allowed(host):
            return None
        ip = parse_address(host)
        return self.refusal(ip) if ip is not None else None


def url_not_allowed(where: str, url: str, refusal: Refusal, *,
                    host: str | None = None) -> UrlNotAllowed:
    """The 422 for a refused job URL: names the field, the URL (redacted), why, and the
    setting that opens exceptions. ``host``: the name that resolved to the address."""
    shown = redact_url(url)
    reason = refusal.reason
    if (host is not None and refusal.address is not None and refusal.kind is not None
            and parse_address(host) is None):
        reason = f"{host} resolves to {refusal.address}, {_a(refusal.kind)} address"
    setting = env_name("url_allow")
    details: dict[str, str] = {"url": shown, "setting": setting}
    if refusal.address is not None:
        details["address"] = refusal.address
    if refusal.kind is not None:
        details["kind"] = refusal.kind
    return UrlNotAllowed(
        f"{where}: {shown} is not allowed: {reason}",
        hint="a job may fetch only http(s) URLs of public addresses; the operator can "
        f"allow a network or host with {setting} (comma-separated CIDRs or host names, "
        "e.g. 10.1.0.0/16,models.internal)", details=[details])
