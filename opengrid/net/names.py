"""DNS names in bootstrap addresses: ``/dns4/``, ``/dns6/``, ``/dns/`` and ``/dnsaddr/`` multiaddrs.

A public grid publishes one name instead of a list of IP addresses (spec/discovery.md §5.9):

* ``/dns4/NAME/tcp/PORT/p2p/ID`` (``/dns6/``: IPv6, ``/dns/``: either) dials each address ``NAME``
  resolves to, with the rest of the multiaddr kept: ``/ip4/A.B.C.D/tcp/PORT/p2p/ID``.
* ``/dnsaddr/NAME`` (optionally ``/dnsaddr/NAME/p2p/ID``) follows the multiaddr spec's dnsaddr: the TXT
  records of ``_dnsaddr.NAME`` that read ``dnsaddr=<multiaddr>`` name the addresses, which may themselves
  be ``/dnsaddr/`` (followed again) or ``/dns4/`` names. With ``/p2p/ID`` only records of that peer count.

Every lookup is bounded (``Resolver``): one resolution may take ``timeout_s`` in all, follow
``max_depth`` nested ``/dnsaddr/`` levels and ``max_records`` TXT records per name, and yields at most
``max_addresses`` addresses. A name that does not resolve (now) is a ``NameResolutionError``, a
``TransportError``: a node retries it like a bootstrap that does not answer, since DNS can come back. An
address that cannot be right whatever DNS says (``/dns4/`` without ``/p2p/``) is a ``ConfigError`` at start.

The lookups are functions a test replaces (``Resolver(lookup_txt=...)``; tests never use real DNS): host
names through the system's resolver (``getaddrinfo`` on a worker thread, as trio does it, so
``/etc/hosts`` counts) and TXT records through dnspython (on a worker thread, each query bounded by the
time left).
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import trio

from opengrid.errors import ConfigError, NameResolutionError, TransportError

if TYPE_CHECKING:
    from opengrid.net.host import Host

HostLookup = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(name, family) -> IP addresses``; family is ``socket.AF_INET``, ``AF_INET6`` or ``AF_UNSPEC``."""
TxtLookup = Callable[[str], Awaitable[Sequence[str]]]
"""``name -> TXT record strings`` (each record's character strings joined); empty when it has none."""

DNS_PROTOCOLS: Final = ("dns", "dns4", "dns6", "dnsaddr")
_FAMILY: Final = {"dns": socket.AF_UNSPEC, "dns4": socket.AF_INET, "dns6": socket.AF_INET6}
_MAX_NAME_CHARS: Final = 253
_MAX_RECORD_CHARS: Final = 1024
_TXT_THREADS: Final = trio.lowlevel.RunVar[trio.CapacityLimiter]("_TXT_THREADS")
"""At most 4 TXT lookups on threads at once, per trio run (the SDK runs one of its own)."""


def dns_protocol(address: str) -> str | None:
    """The DNS protocol an address starts with (``dns4``, ``dnsaddr``...), or None."""
    first = address.split("/", 2)[1] if address.startswith("/") and address.count("/") >= 2 else ""
    return first if first in DNS_PROTOCOLS else None


def peer_of(address: str) -> str | None:
    """The peer id after the last ``/p2p/``, or None."""
    return address.rsplit("/p2p/", 1)[1] if "/p2p/" in address else None


def check_name_address(address: str, flag: str = "--bootstrap") -> None:
    """Raise ``ConfigError`` for a DNS multiaddr that no DNS answer could make dialable."""
    protocol = dns_protocol(address)
    if protocol is None:
        return
    parts = address.split("/")
    name = parts[2] if len(parts) > 2 else ""
    if not name or len(name) > _MAX_NAME_CHARS or any(c.isspace() for c in name):
        raise ConfigError(f"{flag} {address!r} names no valid host (1-{_MAX_NAME_CHARS} characters)")
    rest = "/".join(parts[3:])
    if protocol == "dnsaddr":
        if rest and not (rest.startswith("p2p/") and rest.count("/") == 1):
            raise ConfigError(
                f"{flag} {address!r}: after /dnsaddr/NAME only /p2p/PEER_ID may follow (the TXT records "
                "of _dnsaddr.NAME give the rest), e.g. /dnsaddr/bootstrap.example.org"
            )
    elif not rest.startswith("tcp/") or peer_of(address) is None:
        raise ConfigError(
            f"{flag} {address!r} must read /{protocol}/NAME/tcp/PORT/p2p/PEER_ID (the name gives the IP "
            "address; the port and the peer id it cannot give)"
        )


async def system_lookup_host(name: str, family: int) -> list[str]:
    """IP addresses of ``name`` from the system resolver (``/etc/hosts`` and DNS, as ``getaddrinfo``)."""
    infos = await trio.socket.getaddrinfo(name, None, family=family, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def system_lookup_txt(
    name: str, timeout_s: float = 5.0, *, nameserver: tuple[str, int] | None = None
) -> list[str]:
    """TXT records of ``name`` through dnspython, on a worker thread: from the system's nameservers, or
    from ``nameserver`` (IP, port) when given."""

    def blocking() -> list[str]:
        import dns.exception
        import dns.resolver

        try:
            if nameserver is None:
                answer = dns.resolver.resolve(name, "TXT", lifetime=timeout_s, search=False)
            else:
                resolver = dns.resolver.Resolver(configure=False)
                resolver.nameservers = [nameserver[0]]
                resolver.port = nameserver[1]
                answer = resolver.resolve(name, "TXT", lifetime=timeout_s, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise NameResolutionError(f"TXT lookup of {name} failed: {exc or type(exc).__name__}") from exc
        out = []
        for rdata in answer:
            strings = getattr(rdata, "strings", ())
            out.append(b"".join(strings).decode("utf-8", "replace"))
        return out

    try:
        limiter = _TXT_THREADS.get()
    except LookupError:
        limiter = trio.CapacityLimiter(4)
        _TXT_THREADS.set(limiter)
    # abandoned on cancel: the thread itself ends within ``timeout_s`` (dnspython's lifetime); trio-typing's
    # stubs (a py-libp2p dependency) shadow trio's own and predate ``abandon_on_cancel``
    return await trio.to_thread.run_sync(blocking, abandon_on_cancel=True, limiter=limiter)  # type: ignore[call-arg]


async def _default_txt(name: str) -> list[str]:
    return await system_lookup_txt(name)


@dataclass(frozen=True)
class Resolver:
    """Turns DNS multiaddrs into dialable ``/ip4/`` and ``/ip6/`` ones, within fixed bounds."""

    lookup_host: HostLookup = system_lookup_host
    """Host name to IP addresses (default: the system resolver)."""
    lookup_txt: TxtLookup = _default_txt
    """Name to TXT records (default: dnspython with the system's nameservers)."""
    timeout_s: float = 5.0
    """One whole resolution, nested names included, in seconds."""
    max_depth: int = 4
    """Nested ``/dnsaddr/`` levels followed (the name given is level 1)."""
    max_records: int = 16
    """``dnsaddr=`` TXT records followed per name; the rest are ignored."""
    max_addresses: int = 16
    """Addresses one resolution yields at most."""

    async def resolve(self, address: str) -> list[str]:
        """The dialable addresses ``address`` stands for, in the order DNS gave them, deduplicated (the
        address itself when it names no DNS name). Raises ``NameResolutionError``."""
        if dns_protocol(address) is None:
            return [address]
        try:
            check_name_address(address)
        except ConfigError as exc:
            raise NameResolutionError(str(exc)) from None
        skipped: list[str] = []
        with trio.move_on_after(self.timeout_s) as scope:
            found = await self._resolve(address, 1, skipped)
        if scope.cancelled_caught:
            raise NameResolutionError(
                f"{address} did not resolve within {self.timeout_s:g} s; check the name and this machine's "
                "DNS, or give an /ip4/ address (the node keeps retrying)"
            )
        out = list(dict.fromkeys(found))[: self.max_addresses]
        if not out:
            why = "; ".join(skipped[:4]) or "no addresses"
            raise NameResolutionError(
                f"{address} resolved to no dialable address ({why}); check its DNS records "
                f"(`dig TXT _dnsaddr.NAME` must list dnsaddr=/ip4/.../tcp/PORT/p2p/PEER_ID), or give an "
                "/ip4/ address (the node keeps retrying)"
            )
        return out

    async def _resolve(self, address: str, depth: int, skipped: list[str]) -> list[str]:
        protocol = dns_protocol(address)
        if protocol is None:
            if peer_of(address) is None:
                skipped.append(f"{address} has no /p2p/PEER_ID")
                return []
            return [address]
        parts = address.split("/")
        name, rest = parts[2], "/".join(parts[3:])
        if protocol != "dnsaddr":
            if not rest.startswith("tcp/") or peer_of(address) is None:
                skipped.append(f"{address} is not /{protocol}/NAME/tcp/PORT/p2p/PEER_ID")
                return []
            try:
                ips = await self.lookup_host(name, _FAMILY[protocol])
            except OSError as exc:
                skipped.append(f"{name}: {exc.strerror or exc}")
                return []
            out = []
            for ip in list(dict.fromkeys(ips))[: self.max_addresses]:
                if ":" in ip and protocol != "dns4":
                    out.append(f"/ip6/{ip}/{rest}")
                elif ":" not in ip and protocol != "dns6":
                    out.append(f"/ip4/{ip}/{rest}")
            if not out:
                skipped.append(f"{name} has no {'IPv6' if protocol == 'dns6' else 'IPv4'} address")
            return out
        if depth > self.max_depth:
            skipped.append(f"{address} is nested deeper than {self.max_depth} /dnsaddr/ levels")
            return []
        want = peer_of(address)
        try:
            records = await self.lookup_txt(f"_dnsaddr.{name}")
        except (OSError, TransportError) as exc:
            skipped.append(f"_dnsaddr.{name}: {exc}")
            return []
        targets = [
            r[len("dnsaddr=") :].strip()
            for r in records
            if r.startswith("dnsaddr=") and len(r) <= _MAX_RECORD_CHARS
        ][: self.max_records]
        if not targets:
            skipped.append(f"_dnsaddr.{name} has no dnsaddr= TXT record")
        out = []
        for target in targets:
            if want is not None and peer_of(target) != want:
                continue  # the spec's filter: only the records of the peer the address names
            if not _is_multiaddr(target):
                skipped.append(f"_dnsaddr.{name} lists {target[:80]!r}, not a multiaddr")
                continue
            out += await self._resolve(target, depth + 1, skipped)
            if len(out) >= self.max_addresses:
                break
        return out


def _is_multiaddr(text: str) -> bool:
    import multiaddr

    try:
        multiaddr.Multiaddr(text)
    except Exception:  # multiaddr raises several types
        return False
    return True


async def connect_by_name(host: Host, address: str) -> str:
    """Resolve a DNS multiaddr with ``host.resolver`` and dial what it names, in order, until one
    connection succeeds; returns the peer id. Nothing is resolved while we hold a connection to the
    peer the address names (a joined node re-dials its bootstraps every few beats)."""
    peer = peer_of(address)
    if peer is not None and host.is_connected(peer):
        return peer
    candidates = await host.resolver.resolve(address)
    failures = []
    for candidate in candidates:
        try:
            return await host.connect(candidate)
        except (TransportError, ConfigError) as exc:
            failures.append(str(exc))
    raise TransportError(
        f"could not connect to {address} (resolved to {', '.join(candidates)}): " + "; ".join(failures)
    )
