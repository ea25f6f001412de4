"""The network driver: the ONLY package that imports libp2p (TCP + Noise + yamux on trio).

Everything libp2p-specific — hosts, peer ids, streams, their exceptions — stays behind this seam, so a
fix or a swap of the library touches one place and the core never sees it.
"""
