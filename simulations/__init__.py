"""OpenGrid network simulator: the real sans-IO core driven by a seeded discrete-event engine.

Run a scenario with ``opengrid sim run scenarios/baseline.toml --seed 1 --out runs/baseline`` or from
Python with :func:`simulations.simulation.simulate`. See simulations/README.md.
"""
