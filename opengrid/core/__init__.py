"""Sans-IO protocol core: state machines and pure policies.

Nothing here imports trio, libp2p, sockets, time, random or os: time, randomness and keys come in as
arguments, so the trio node and the simulator drive the very same objects (tests/core/test_purity.py).
"""
