"""dfs-bench: the benchmark (see dfs/bench/cli.py)."""
