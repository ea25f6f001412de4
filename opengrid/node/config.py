"""A node's validated configuration."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Literal

from opengrid.errors import ConfigError

Role = Literal["worker", "coordinator", "edge", "auto"]
ROLES: tuple[Role, ...] = ("worker", "coordinator", "edge", "auto")
DEFAULT_NETWORK = "opengrid-local"
DEFAULT_LISTEN = "/ip4/127.0.0.1/tcp/0"


@dataclass(frozen=True)
class NodeConfig:
    """Everything ``opengrid node start`` needs; ``validated()`` resolves ``auto`` and checks values."""

    data_dir: pathlib.Path
    role: Role = "auto"
    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    bootstrap: tuple[str, ...] = ()
    model: str | None = None
    """Model name or GGUF path a worker serves; None picks the default model."""
    network: str = DEFAULT_NETWORK
    heartbeat_s: float = 5.0
    threads: int | None = None
    adversary: str | None = None
    """Demo/test only: make this worker cheat ('wrong-tokens') to show verification catching it."""
    extra: dict[str, str] = field(default_factory=dict)

    def validated(self) -> NodeConfig:
        """Return a copy with ``auto`` resolved; raise ConfigError naming the bad value and the choices."""
        if self.role not in ROLES:
            raise ConfigError(f"role {self.role!r} is not one of {', '.join(ROLES)}")
        if not self.listen:
            raise ConfigError("at least one --listen address is needed, e.g. /ip4/127.0.0.1/tcp/4001")
        if self.heartbeat_s <= 0:
            raise ConfigError(f"heartbeat must be positive seconds, got {self.heartbeat_s}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.adversary not in (None, "wrong-tokens"):
            raise ConfigError(f"adversary {self.adversary!r} is not one of: wrong-tokens")
        if not self.network or len(self.network) > 64:
            raise ConfigError(f"network name {self.network!r} must be 1..64 characters")
        role = self.role
        if role == "auto":
            # Without a bootstrap address nothing can be joined, so the node starts a network and
            # coordinates it; with one it lends its compute. (A hardware probe refines this: issue 3.)
            role = "worker" if self.bootstrap else "coordinator"
        if role in ("worker", "edge") and not self.bootstrap:
            raise ConfigError(
                f"a {role} needs --bootstrap with a coordinator's multiaddr "
                "(the coordinator prints it at start, e.g. /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...)"
            )
        return NodeConfig(
            data_dir=self.data_dir,
            role=role,
            listen=self.listen,
            bootstrap=self.bootstrap,
            model=self.model,
            network=self.network,
            heartbeat_s=self.heartbeat_s,
            threads=self.threads,
            adversary=self.adversary,
            extra=self.extra,
        )

    @property
    def serves_models(self) -> bool:
        return self.role in ("worker", "edge")
