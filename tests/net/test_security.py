"""Who may connect: Noise only (plaintext and secio dialers are refused), and the private-network key."""

from __future__ import annotations

import secrets

import multiaddr
import pytest
import trio
from libp2p import create_yamux_muxer_option, new_host
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.security.secio import transport as secio

from opengrid.errors import ConfigError, IncompatiblePeerError, TransportError
from opengrid.net.host import FrameStream, derive_psk, open_host, quiet_libp2p_logging
from opengrid.net.keys import keypair_from_seed
from opengrid.wire.messages import StatusRequest


@pytest.mark.parametrize("scheme", ["plaintext", "secio"])
async def test_insecure_dialer_is_refused(scheme: str) -> None:
    quiet_libp2p_logging()
    key_pair = keypair_from_seed(secrets.token_bytes(32))
    transport = InsecureTransport(key_pair) if scheme == "plaintext" else secio.Transport(key_pair)
    protocol = PLAINTEXT_PROTOCOL_ID if scheme == "plaintext" else secio.ID
    dialer = new_host(
        key_pair=key_pair,
        sec_opt={protocol: transport},
        muxer_opt=create_yamux_muxer_option(),
        connection_config=ConnectionConfig(max_connections_per_peer=1),
    )
    dialer.get_network().retry_config = RetryConfig(max_retries=0)  # type: ignore[attr-defined]  # one try
    async with open_host(secrets.token_bytes(32)) as ours:
        async with dialer.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            with trio.fail_after(10):
                with pytest.raises(Exception, match=r"negotiate|connect|security") as caught:
                    await dialer.connect(info_from_p2p_addr(multiaddr.Multiaddr(ours.addrs()[0])))
            assert not ours.connected_peers(), caught.value
            await dialer.close()


async def test_same_network_key_connects_and_wrong_or_missing_key_is_refused() -> None:
    quiet_libp2p_logging()
    good = derive_psk("private", "invite-token-1")
    bad = derive_psk("private", "invite-token-2")
    assert derive_psk("other", "invite-token-1") != good  # the key is bound to the network name
    async with open_host(secrets.token_bytes(32), psk=good, upgrade_timeout_s=0.5) as server:
        address = server.addrs()[0]
        async with open_host(secrets.token_bytes(32), psk=good) as friend:
            with trio.fail_after(5):
                assert await friend.connect(address) == server.peer_id
        for psk in (bad, None):  # one try each: a refusal is what is tested, not the library's retries
            async with open_host(
                secrets.token_bytes(32), psk=psk, upgrade_timeout_s=0.5, dial_retries=0
            ) as stranger:
                with trio.fail_after(10), pytest.raises(TransportError):
                    await stranger.connect(address)
                assert server.peer_id not in stranger.connected_peers()
        assert server.connected_peers() == []


async def test_psk_must_be_32_bytes() -> None:
    with pytest.raises(ConfigError, match="32 bytes"):
        async with open_host(secrets.token_bytes(32), psk=b"short"):
            pass
    with pytest.raises(ConfigError):
        derive_psk("net", "")


async def test_a_peer_of_another_protocol_version_is_refused_with_a_clear_typed_error() -> None:
    quiet_libp2p_logging()
    async with (
        open_host(secrets.token_bytes(32), ["/ip4/127.0.0.1/tcp/0"]) as ours,
        open_host(secrets.token_bytes(32), ["/ip4/127.0.0.1/tcp/0"]) as newer,
    ):

        async def serve(stream: FrameStream) -> None:
            await stream.send(StatusRequest())

        newer.set_handler(serve, TProtocol("/opengrid/job/2"))  # a later version speaks job/2 only
        peer = await ours.connect(newer.addrs()[0])
        with pytest.raises(IncompatiblePeerError, match="another OpenGrid protocol version") as caught:
            await ours.request(peer, StatusRequest())
        assert isinstance(caught.value, TransportError)  # callers that retry elsewhere still do
        assert "/opengrid/job/1" in str(caught.value) and peer in str(caught.value)
