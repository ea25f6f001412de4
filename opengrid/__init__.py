"""OpenGrid: a peer-to-peer volunteer-computing network for LLM inference.

Layers (imports point inward only): ``opengrid.wire`` and ``opengrid.core`` are sans-IO; ``opengrid.net``,
``opengrid.engines``, ``opengrid.store`` and ``opengrid.node`` are the drivers; ``opengrid.cli`` is an app.
"""

__version__ = "0.1.0"
