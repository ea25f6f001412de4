"""The node driver: a trio service that runs the core machines, the engine and the ledger store."""
