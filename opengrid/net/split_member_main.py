"""A stand-alone split member: ``python -m opengrid.net.split_member_main --max-memory BYTES [--seed HEX]``.

A libp2p host on 127.0.0.1 that serves ``/opengrid/split/1`` (opengrid/net/split.py) and nothing else;
it prints ``addr <multiaddr>`` once listening and runs until stdin closes or it is killed. Tests and
benchmarks/split_bench.py start members this way; a node serves the same protocol in-process.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys

import trio
from nacl.signing import SigningKey

from opengrid.net.host import open_host, quiet_libp2p_logging
from opengrid.net.split import SplitLimits, SplitMember


async def _run(max_memory: int, seed: bytes, threads: int, print_ports: bool, network: str) -> None:
    quiet_libp2p_logging()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="member %(levelname)s %(message)s")

    def said(port: int) -> None:
        print(f"rpc {port}", flush=True)

    async with open_host(seed) as host, trio.open_nursery() as nursery:
        limits = SplitLimits(max_memory_bytes=max_memory, rpc_threads=threads)
        member = SplitMember(
            host,
            limits,
            on_session=said if print_ports else None,
            signing_key=SigningKey(seed),  # co-signs its heads' jobs (spec/split.md §8)
            network=network,
        )
        await nursery.start(member.run)
        print(f"addr {host.addrs()[0]}", flush=True)
        stdin = trio.lowlevel.FdStream(0)
        while await stdin.receive_some(1024):  # until the parent closes our stdin
            pass
        nursery.cancel_scope.cancel()


def main(argv: list[str]) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="split_member_main")
    parser.add_argument("--max-memory", type=int, required=True, help="bytes this member offers")
    parser.add_argument("--seed", default="", help="identity seed, 64 hex characters (default: random)")
    parser.add_argument("--threads", type=int, default=1, help="threads of the RPC server")
    parser.add_argument("--network", default="opengrid-local", help="network its attestations name")
    parser.add_argument("--print-ports", action="store_true", help="print `rpc <port>` for each session")
    args = parser.parse_args(argv)
    seed = bytes.fromhex(args.seed) if args.seed else secrets.token_bytes(32)
    trio.run(_run, args.max_memory, seed, args.threads, args.print_ports, args.network)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
