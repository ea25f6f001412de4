"""The node's Ed25519 identity, kept in its data dir: created on first start, reused afterwards."""

from __future__ import annotations

import logging
import os
import pathlib
import secrets

from opengrid.errors import ConfigError

IDENTITY_FILE = "identity.key"
log = logging.getLogger("opengrid.node")


def load_or_create_seed(data_dir: pathlib.Path) -> bytes:
    """Return the 32-byte identity seed in ``data_dir``, creating it (mode 0600) on first use."""
    path = data_dir / IDENTITY_FILE
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        if path.exists():
            seed = path.read_bytes()
            if len(seed) != 32:
                raise ConfigError(
                    f"{path} holds {len(seed)} bytes, not a 32-byte identity; "
                    "move it away to create a new one"
                )
            return seed
        seed = secrets.token_bytes(32)
        # Written whole under a name of its own, then linked into place: a kill or a Ctrl-C mid-write
        # (opengrid.cli.interrupt exits at once) never leaves a short identity file, and link() fails
        # if it exists, so two nodes started on one data dir never overwrite each other's identity.
        partial = data_dir / f".{IDENTITY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(seed)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(partial, path)
        except FileExistsError:
            return load_or_create_seed(data_dir)  # the other node won: use its identity
        finally:
            partial.unlink(missing_ok=True)
        log.info("created a new identity in %s", path)
        return seed
    except OSError as exc:
        raise ConfigError(f"cannot use data dir {data_dir}: {exc.strerror or exc}") from exc


def read_identity(path: pathlib.Path) -> bytes:
    """The 32-byte identity seed at ``path``: a node's data dir (its ``identity.key``) or a key file.
    Never creates one. Raises ConfigError, saying which, when it is missing, unreadable or not 32 bytes."""
    key_file = path / IDENTITY_FILE if path.is_dir() else path
    try:
        seed = key_file.read_bytes()
    except FileNotFoundError as exc:
        where = f"data dir {path} has no {IDENTITY_FILE}" if path.is_dir() else f"no identity file {path}"
        raise ConfigError(
            f"{where}; pass a node's data dir (holding {IDENTITY_FILE}) or a 32-byte key file "
            "(a node creates its identity when it first starts)"
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"cannot read the identity in {key_file}: {exc.strerror or exc}; check its permissions "
            "(it should be readable by you alone: mode 0600)"
        ) from exc
    if len(seed) != 32:
        raise ConfigError(
            f"{key_file} holds {len(seed)} bytes, not a 32-byte Ed25519 identity seed; pass a node's "
            f"data dir or its {IDENTITY_FILE}"
        )
    return seed
