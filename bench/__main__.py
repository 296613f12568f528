"""`python -m bench`: the whole benchmark suite, printed as one table.

Sections (all by default, `--only` picks some): ingest, e2e, delivery, fanout, polling,
memory, soak, scaling. Every process it needs (redis-server, relay web and worker, the
subscribers, wrk) it starts itself and stops on exit or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

from bench import runner, suite
from bench.procs import BenchError, Children
from bench.wrk import INSTALL_HINT


def parse_args(argv: list[str] | None) -> tuple[runner.Config, Path | None]:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="relay's benchmark suite: ingest against a bare Starlette+XADD baseline "
                    "(wrk), end-to-end latency, delivery rate against a plain aiohttp loop, "
                    "fan-out, polling, memory, an RSS soak and 2+2-process scaling; one table.")
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
    parser.add_argument("--no-delivery-ingest", action="store_true",
                        help="skip the ingest run with a worker delivering on the same cores")
    parser.add_argument("--relay-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the relay processes (repeatable)")
    parser.add_argument("--only", default=",".join(suite.SECTIONS), metavar="SECTIONS",
                        help="comma-separated sections to run (default all: "
                             + ",".join(suite.SECTIONS) + ")")
    parser.add_argument("--delivery-events", type=int, default=20_000,
                        help="stored events each delivery run drains (default 20,000)")
    parser.add_argument("--fanout-repeats", type=int, default=10,
                        help="callbacks per fan-out run (default 10)")
    parser.add_argument("--memory-events", type=int, default=100_000,
                        help="callbacks before relay's RSS is read (default 100,000)")
    parser.add_argument("--soak-seconds", type=float, default=600.0,
                        help="seconds of the RSS soak at --rate callbacks/s (default 600)")
    parser.add_argument("--polling-runs", type=int, default=10_000,
                        help="tracked runs of the polling section (default 10,000)")
    parser.add_argument("--polling-rate", type=float, default=2_000.0,
                        help="polls/s of the steady-lag phase (default 2,000)")
    parser.add_argument("--polling-window", type=float, default=10.0,
                        help="seconds of polling capacity measurement; lag: twice (default 10)")
    parser.add_argument("--tiny", action="store_true",
                        help="every section very small and fast (1 run, 1 s ingest, 50/s for "
                             "2 s, 500 delivered events, 4 s soak, ...)")
    parser.add_argument("--out", type=Path, help="write the raw results as JSON to this file")
    args = parser.parse_args(argv)
    if min(args.runs, args.duration, args.rate, args.e2e_seconds, args.delivery_events,
           args.fanout_repeats, args.memory_events, args.soak_seconds, args.polling_runs,
           args.polling_rate, args.polling_window) <= 0:
        parser.error("counts, rates and durations must be positive")
    only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = [s for s in only if s not in suite.SECTIONS]
    if unknown or not only:
        parser.error(f"--only takes some of {','.join(suite.SECTIONS)}; not {unknown}")
    if args.threads < 1 or args.connections < args.threads:
        parser.error("--threads must be >= 1 and --connections >= --threads")
    relay_env = dict(item.partition("=")[::2] for item in args.relay_env)
    if any(not name for name in relay_env):
        parser.error("--relay-env takes NAME=VALUE")
    cfg = runner.Config(duration=args.duration, runs=args.runs, rate=args.rate,
                        e2e_seconds=args.e2e_seconds, threads=args.threads,
                        connections=args.connections, with_delivery=not args.no_delivery_ingest,
                        relay_env=relay_env, only=only, delivery_events=args.delivery_events,
                        fanout_repeats=args.fanout_repeats, memory_events=args.memory_events,
                        soak_seconds=args.soak_seconds, polling_runs=args.polling_runs,
                        polling_rate=args.polling_rate, polling_window=args.polling_window)
    if args.tiny:
        cfg.duration, cfg.runs, cfg.rate, cfg.e2e_seconds = 1.0, 1, 50.0, 2.0
        cfg.delivery_events, cfg.fanout_repeats, cfg.memory_events = 500, 3, 1_000
        cfg.soak_seconds, cfg.polling_runs, cfg.polling_rate = 4.0, 500, 250.0
        cfg.polling_window = 2.0
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
        print("bench: redis-server is not installed; install it with "
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
            print(f"bench: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench: interrupted; stopping every process it started", file=sys.stderr)
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
