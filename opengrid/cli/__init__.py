"""The command line (an app: it uses the node, the SDK and the engines, never the other way round)."""
