"""Test support that ships with OpenGrid but that the product never imports (as ``trio.testing``).

- :mod:`.wallet`: ``FakeWalletSource``, an in-memory wallet data source, and the demo data the wallet's
  tests and screenshots show.
- :mod:`.screenshots`: renders each wallet screen headless and (re)writes ``docs/wallet-*.svg``:
  ``python -m opengrid.testing.screenshots``.
- :mod:`.split_adversary`: a split-group member that corrupts the activations it returns to its head
  (``corrupting_member``), to show that the group's output then fails audit (tests/net/test_split_audit.py).
- :mod:`.memnet`: ``MemoryNetwork``, an in-memory transport (opengrid/net/transport.py) for node tests
  in virtual time (``MockClock``), and ``clock_stops_for_threads``.
- :mod:`.engines`: ``EchoEngine`` and ``CheatingEchoEngine``, deterministic engines without a model.

A test (tests/core/test_purity_testing.py) fails if any module of opengrid, opengrid_sdk or opengrid_ledger
outside this package imports it. The cheating engines of ``opengrid.engines.adversarial`` are not here: the
node's ``--adversary`` flag and ``opengrid demo`` use them.
"""
