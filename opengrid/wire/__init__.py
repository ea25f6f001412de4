"""Wire formats: msgspec message structs, framing, size limits and canonical signing bytes (sans-IO)."""
