"""The measures of `scripts/benchmark.py`, one module each: throughput against the raw forward, bare loops, warm
jobs, the framework at scale and the feature store alone (with the programs their fresh processes run)."""
