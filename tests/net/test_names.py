"""DNS names in bootstrap addresses (opengrid/net/names.py): /dns4/, /dns6/, /dns/ and /dnsaddr/.

The resolution rules run against injected lookup functions (no DNS query leaves this machine); the one
real lookup is ``localhost`` through the system resolver, and the real dial goes to 127.0.0.1.
"""

from __future__ import annotations

import pathlib
import secrets
import socket
from collections.abc import Mapping, Sequence

import pytest
import trio
import trio.testing

from opengrid.errors import ConfigError, NameResolutionError, TransportError
from opengrid.net.host import open_host, quiet_libp2p_logging
from opengrid.net.names import Resolver, check_name_address, system_lookup_host, system_lookup_txt
from opengrid.node.config import NodeConfig
from opengrid.settings import load_settings

A = "12D3KooWN5TM5CbW1QRMfb4Rui58doGzeD2AvdHtagrxTSGtCyCo"
B = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"


class FakeDns:
    """Host and TXT tables; counts every lookup."""

    def __init__(
        self, hosts: Mapping[str, Sequence[str]] = {}, txt: Mapping[str, Sequence[str]] = {}
    ) -> None:
        self.hosts = dict(hosts)
        self.txt = dict(txt)
        self.asked: list[str] = []

    async def lookup_host(self, name: str, family: int) -> list[str]:
        self.asked.append(name)
        if name not in self.hosts:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        ips = self.hosts[name]
        if family == socket.AF_INET:
            return [ip for ip in ips if ":" not in ip]
        if family == socket.AF_INET6:
            return [ip for ip in ips if ":" in ip]
        return list(ips)

    async def lookup_txt(self, name: str) -> list[str]:
        self.asked.append(name)
        return list(self.txt.get(name, []))

    def resolver(self, **bounds: float) -> Resolver:
        return Resolver(lookup_host=self.lookup_host, lookup_txt=self.lookup_txt, **bounds)  # type: ignore[arg-type]


async def test_dns4_dns6_and_dns_keep_the_rest_of_the_address() -> None:
    dns = FakeDns(hosts={"grid.example": ["10.0.0.1", "10.0.0.2", "10.0.0.1", "fd00::1"]})
    r = dns.resolver()
    assert await r.resolve(f"/dns4/grid.example/tcp/4001/p2p/{A}") == [
        f"/ip4/10.0.0.1/tcp/4001/p2p/{A}",
        f"/ip4/10.0.0.2/tcp/4001/p2p/{A}",
    ]
    assert await r.resolve(f"/dns6/grid.example/tcp/4001/p2p/{A}") == [f"/ip6/fd00::1/tcp/4001/p2p/{A}"]
    assert len(await r.resolve(f"/dns/grid.example/tcp/4001/p2p/{A}")) == 3
    # an address without a name is left as it is, and asks nothing
    asked = len(dns.asked)
    assert await r.resolve(f"/ip4/127.0.0.1/tcp/1/p2p/{A}") == [f"/ip4/127.0.0.1/tcp/1/p2p/{A}"]
    assert len(dns.asked) == asked


async def test_dnsaddr_follows_txt_records_nested_names_and_the_peer_filter() -> None:
    dns = FakeDns(
        hosts={"a.grid.example": ["10.0.0.1"]},
        txt={
            "_dnsaddr.grid.example": [
                "v=spf1 -all",  # not a dnsaddr record: ignored
                f"dnsaddr=/dns4/a.grid.example/tcp/4001/p2p/{A}",
                "dnsaddr=/dnsaddr/b.grid.example",
                "dnsaddr=not a multiaddr",
                "dnsaddr=/ip4/10.0.0.9/tcp/4001",  # no peer id: cannot be dialled
            ],
            "_dnsaddr.b.grid.example": [f"dnsaddr=/ip4/10.0.0.2/tcp/4002/p2p/{B}"],
        },
    )
    r = dns.resolver()
    assert await r.resolve("/dnsaddr/grid.example") == [
        f"/ip4/10.0.0.1/tcp/4001/p2p/{A}",
        f"/ip4/10.0.0.2/tcp/4002/p2p/{B}",
    ]
    # /p2p/ID after the name keeps only that peer's records (the multiaddr spec's dnsaddr filter)
    assert await r.resolve(f"/dnsaddr/grid.example/p2p/{A}") == [f"/ip4/10.0.0.1/tcp/4001/p2p/{A}"]


async def test_nested_dnsaddr_records_are_followed_to_a_bounded_depth() -> None:
    loop = FakeDns(txt={"_dnsaddr.loop.example": ["dnsaddr=/dnsaddr/loop.example"]})
    with pytest.raises(NameResolutionError, match="deeper than 4 /dnsaddr/ levels") as info:
        await loop.resolver().resolve("/dnsaddr/loop.example")
    assert "dig TXT _dnsaddr.NAME" in str(info.value) and "keeps retrying" in str(info.value)
    assert loop.asked == ["_dnsaddr.loop.example"] * 4
    chain = FakeDns(
        txt={
            "_dnsaddr.one.example": ["dnsaddr=/dnsaddr/two.example"],
            "_dnsaddr.two.example": [f"dnsaddr=/ip4/10.0.0.3/tcp/1/p2p/{A}"],
        }
    )
    assert await chain.resolver(max_depth=2).resolve("/dnsaddr/one.example") == [
        f"/ip4/10.0.0.3/tcp/1/p2p/{A}"
    ]
    with pytest.raises(NameResolutionError):
        await chain.resolver(max_depth=1).resolve("/dnsaddr/one.example")


async def test_txt_records_and_addresses_are_capped() -> None:
    many = [f"dnsaddr=/dnsaddr/n{i}.example" for i in range(40)]
    dns = FakeDns(
        txt={"_dnsaddr.big.example": many}
        | {f"_dnsaddr.n{i}.example": [f"dnsaddr=/ip4/10.0.1.{i}/tcp/1/p2p/{A}"] for i in range(40)}
    )
    found = await dns.resolver(max_records=16, max_addresses=5).resolve("/dnsaddr/big.example")
    assert found == [f"/ip4/10.0.1.{i}/tcp/1/p2p/{A}" for i in range(5)]
    assert len(dns.asked) == 1 + 5  # stopped following once 5 addresses were found
    dns.asked.clear()
    found = await dns.resolver(max_records=3).resolve("/dnsaddr/big.example")
    assert len(found) == 3 and len(dns.asked) == 1 + 3  # records past the 3rd never followed


async def test_a_slow_lookup_is_cut_at_the_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async def never(name: str) -> list[str]:
        await trio.sleep_forever()
        raise AssertionError

    resolver = Resolver(lookup_txt=never, timeout_s=5.0)
    start = trio.current_time()
    with pytest.raises(NameResolutionError, match="did not resolve within 5 s"):
        await resolver.resolve("/dnsaddr/slow.example")
    assert trio.current_time() - start == pytest.approx(5.0)


async def test_unknown_names_are_typed_errors_that_say_what_to_do() -> None:
    dns = FakeDns()
    with pytest.raises(NameResolutionError, match=r"nowhere\.example: Name or service not known") as info:
        await dns.resolver().resolve(f"/dns4/nowhere.example/tcp/4001/p2p/{A}")
    assert isinstance(info.value, TransportError)  # retried like an unreachable bootstrap
    assert "give an /ip4/ address" in str(info.value)
    with pytest.raises(NameResolutionError, match="no dnsaddr= TXT record"):
        await dns.resolver().resolve("/dnsaddr/empty.example")

    async def broken(name: str) -> list[str]:
        raise NameResolutionError(f"TXT lookup of {name} failed: no nameservers")

    with pytest.raises(NameResolutionError, match="no nameservers"):
        await Resolver(lookup_txt=broken).resolve("/dnsaddr/grid.example")


def test_addresses_that_no_dns_answer_could_fix_are_config_errors(tmp_path: pathlib.Path) -> None:
    for bad in (
        "/dns4/grid.example/tcp/4001",  # no peer id
        "/dns4/grid.example/udp/4001/p2p/" + A,
        "/dnsaddr/grid.example/tcp/4001",
    ):
        with pytest.raises(ConfigError, match="--bootstrap"):
            check_name_address(bad)
        with pytest.raises(ConfigError):
            NodeConfig(data_dir=tmp_path, role="worker", bootstrap=(bad,)).validated()
    with pytest.raises(ConfigError, match=r"--relay-via .* names are for --bootstrap"):
        NodeConfig(
            data_dir=tmp_path,
            role="worker",
            bootstrap=(f"/ip4/127.0.0.1/tcp/1/p2p/{A}",),
            relay_via=(f"/dns4/relay.example/tcp/1/p2p/{B}",),
        ).validated()


def test_a_config_file_lists_bootstraps_by_name(tmp_path: pathlib.Path) -> None:
    names = [
        "/dnsaddr/grid.example",
        f"/dns4/boot.grid.example/tcp/4001/p2p/{A}",
        f"/ip4/127.0.0.1/tcp/1/p2p/{B}",
    ]
    file = tmp_path / "opengrid.toml"
    file.write_text(f'role = "worker"\nno_listen = true\nbootstrap = {names!r}\n'.replace("'", '"'))
    config, sources = load_settings({}, {}, file)
    valid = config.validated()
    assert valid.bootstrap == tuple(names) and sources["bootstrap"] == f"file:{file}"
    # a node without a listen address relays through its /ip4/ bootstraps only (names.py, config.relays)
    assert valid.relays == (names[2],)


async def test_the_system_resolver_knows_localhost() -> None:
    assert "127.0.0.1" in await system_lookup_host("localhost", socket.AF_INET)


async def test_a_host_dials_dns4_localhost_and_a_dnsaddr_name() -> None:
    quiet_libp2p_logging()
    async with open_host(secrets.token_bytes(32)) as server, open_host(secrets.token_bytes(32)) as client:
        direct = server.addrs()[0]
        assert direct.startswith("/ip4/127.0.0.1/tcp/")
        by_name = direct.replace("/ip4/127.0.0.1/", "/dns4/localhost/", 1)
        with trio.fail_after(20):
            assert await client.connect(by_name) == server.peer_id
            await client.disconnect(server.peer_id)
            # /dnsaddr/ whose TXT record names the server by /dns4/localhost (real system lookup of it)
            dns = FakeDns(txt={"_dnsaddr.grid.test": [f"dnsaddr={by_name}"]})
            client.resolver = Resolver(lookup_txt=dns.lookup_txt)
            assert await client.connect("/dnsaddr/grid.test") == server.peer_id
            # connected: the name is not looked up again
            assert await client.connect(f"/dnsaddr/grid.test/p2p/{server.peer_id}") == server.peer_id
            assert dns.asked == ["_dnsaddr.grid.test"]
            with pytest.raises(NameResolutionError):
                await client.connect("/dnsaddr/other.test")


async def test_txt_records_come_through_dnspython_from_a_nameserver_on_loopback() -> None:
    """The real TXT path (dnspython on a thread) against a small DNS server on 127.0.0.1."""
    import dns.message
    import dns.rdatatype
    import dns.rrset

    records = {"_dnsaddr.grid.test.": [f"dnsaddr=/ip4/127.0.0.1/tcp/4001/p2p/{A}", "x" * 300]}
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    async def serve() -> None:
        while True:
            data, peer = await sock.recvfrom(4096)
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            question = query.question[0]
            texts = records.get(question.name.to_text(), [])
            if question.rdtype == dns.rdatatype.TXT and texts:
                # a 300-character record travels as several character strings: joined again on arrival
                quoted = [
                    '"' + '" "'.join(t[i : i + 255] for i in range(0, len(t), 255)) + '"' for t in texts
                ]
                reply.answer.append(dns.rrset.from_text(question.name, 60, "IN", "TXT", *quoted))
            await sock.sendto(reply.to_wire(), peer)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        with trio.fail_after(10):
            found = await system_lookup_txt("_dnsaddr.grid.test", nameserver=("127.0.0.1", port))
            assert sorted(found) == sorted(records["_dnsaddr.grid.test."])  # an RRset has no order
            assert await system_lookup_txt("_dnsaddr.none.test", nameserver=("127.0.0.1", port)) == []
        nursery.cancel_scope.cancel()
    sock.close()
    # a nameserver that never answers: a typed error within the timeout
    silent = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await silent.bind(("127.0.0.1", 0))
    with (
        trio.fail_after(10),
        pytest.raises(NameResolutionError, match=r"TXT lookup of _dnsaddr\.grid\.test failed"),
    ):
        await system_lookup_txt("_dnsaddr.grid.test", 0.2, nameserver=("127.0.0.1", silent.getsockname()[1]))
    silent.close()
