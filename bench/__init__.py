"""relay's benchmark: ingest throughput against a bare baseline, and end-to-end latency.

Run it with `python -m bench` (see `--help`). It starts its own redis-server, relay
processes, baseline app and subscriber as child processes and stops every one of them on the
way out, including on Ctrl-C and on failure. Nothing here is imported by relay itself.
"""
