"""`uv run python -m benchmarks`: the proxy throughput / latency / cost benchmark (benchmarks/run.py).

The protocol micro-benchmarks stay where they were: `uv run python -m benchmarks.micro`.
"""

from benchmarks.run import main

raise SystemExit(main())
