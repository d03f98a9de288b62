"""Side-by-side benchmarks of landscape_fast against its peers (run ``python -m bench.peers``).

See ``bench/peers/README.md``: :mod:`.workloads` builds the problems, :mod:`.reference`
the float64 answers, :mod:`.systems` drives each system, ``__main__`` runs and tabulates.
"""
