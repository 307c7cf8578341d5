"""Benchmarks: ``statewise bench speed`` (speed.py), this machine's limits (machine.py) and
the peer implementations it compares against (peers.py). See docs/performance.md."""
