"""Ed25519 identities: one 32-byte seed gives the libp2p peer id AND the ledger account key."""

from __future__ import annotations

from libp2p.crypto.ed25519 import Ed25519PublicKey, create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

from opengrid.errors import ConfigError, RemoteProtocolError


def keypair_from_seed(seed: bytes) -> KeyPair:
    """The libp2p key pair whose public key is ``nacl.signing.SigningKey(seed).verify_key``."""
    if len(seed) != 32:
        raise ConfigError(f"an identity seed is 32 bytes, got {len(seed)}")
    return create_new_key_pair(seed)


def peer_id_of(public_key: bytes) -> str:
    """The base58 peer id (``12D3KooW...``) of a 32-byte Ed25519 public key."""
    return ID.from_pubkey(Ed25519PublicKey.from_bytes(public_key)).to_base58()


def public_key_of(peer_id: str) -> bytes:
    """The 32-byte Ed25519 key inlined in a peer id; refuses ids that do not inline an Ed25519 key."""
    try:
        key = ID.from_base58(peer_id).extract_public_key()
    except Exception as exc:  # the library raises ValueError, KeyError or base58 errors
        raise RemoteProtocolError(f"peer id {peer_id!r} is not a valid libp2p peer id") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise RemoteProtocolError(f"peer id {peer_id!r} does not carry an Ed25519 key; OpenGrid needs one")
    return bytes(key.to_bytes())
