"""`python -m relay.bench`: measure ingest and end-to-end latency, print one table."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

from relay.bench import runner
from relay.bench.procs import BenchError, Children
from relay.bench.wrk import INSTALL_HINT


def parse_args(argv: list[str] | None) -> tuple[runner.Config, Path | None]:
    parser = argparse.ArgumentParser(
        prog="python -m relay.bench",
        description="Ingest rate of one `relay web` process against a bare Starlette+XADD "
                    "baseline (wrk), and end-to-end latency at a fixed callback rate.")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of each wrk ingest run (default 10)")
    parser.add_argument("--runs", type=int, default=3,
                        help="repeat each measurement N times and report the median (default 3)")
    parser.add_argument("--rate", type=float, default=500.0,
                        help="end-to-end callbacks per second (default 500)")
    parser.add_argument("--e2e-seconds", type=float, default=10.0,
                        help="seconds of each end-to-end run (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--connections", type=int, default=32,
                        help="wrk connections (default 32)")
    parser.add_argument("--web-only", action="store_true",
                        help="also measure relay web with no subscription and no worker")
    parser.add_argument("--relay-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the relay processes (repeatable)")
    parser.add_argument("--tiny", action="store_true",
                        help="a very small, fast configuration (1 s ingest, 1 run, 50/s for 2 s)")
    parser.add_argument("--out", type=Path, help="write the raw results as JSON to this file")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.duration <= 0 or args.rate <= 0 or args.e2e_seconds <= 0:
        parser.error("--runs, --duration, --rate and --e2e-seconds must be positive")
    if args.threads < 1 or args.connections < args.threads:
        parser.error("--threads must be >= 1 and --connections >= --threads")
    relay_env = dict(item.partition("=")[::2] for item in args.relay_env)
    if any(not name for name in relay_env):
        parser.error("--relay-env takes NAME=VALUE")
    cfg = runner.Config(duration=args.duration, runs=args.runs, rate=args.rate,
                        e2e_seconds=args.e2e_seconds, threads=args.threads,
                        connections=args.connections, web_only=args.web_only,
                        relay_env=relay_env)
    if args.tiny:
        cfg.duration, cfg.runs, cfg.rate, cfg.e2e_seconds = 1.0, 1, 50.0, 2.0
    return cfg, args.out


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    cfg, out = parse_args(argv)
    if shutil.which("wrk") is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    if shutil.which("redis-server") is None:
        print("relay.bench: redis-server is not installed; install it with "
              "`apt-get install -y redis-server`", file=sys.stderr)
        return 2
    # Ctrl-C raises KeyboardInterrupt even when the shell started us with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        children = Children(Path(tmp))
        try:
            doc = runner.run_all(cfg, children, Path(tmp))
        except BenchError as exc:
            print(f"relay.bench: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("relay.bench: interrupted; stopping every process it started", file=sys.stderr)
            return 130
        finally:
            # A second Ctrl-C (or a SIGTERM) must not cut the clean-up short.
            for sig in _STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
            children.close()
    print(runner.render(doc), flush=True)
    if out is not None:
        out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if doc["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
