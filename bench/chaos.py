"""`python -m bench.chaos`: traffic while workers and Redis are killed; then what was lost.

It starts its own `redis-server` (AOF, `appendfsync always` unless told otherwise), two
`relay web` and two `relay worker` processes, recording subscribers that check every signature,
and a fake BetterPrompt whose runs finish after a few polls. It sends signed unique Runflow
callbacks across both web processes and tracks BetterPrompt runs with `POST /v1/runs`, retrying
as a provider would, while at random intervals it SIGKILLs a worker (and starts another) or
SIGKILLs Redis and restarts it from its append-only file. Then it waits for the system to drain
and reconciles, by `webhook-id`, what each subscriber received against what relay accepted:
the event id of every 200 answer, and every event of every tracked run (exactly one of them
terminal). It exits 1 if anything accepted was not delivered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.chaos_check import Reconciled, Reconciler
from bench.chaos_load import Sent, send_callbacks, track_runs
from bench.procs import (
    BenchError,
    Child,
    Children,
    clean_env,
    free_port,
    http_ready,
    python_module,
    start_redis,
    wait_until,
)
from bench.stacks import redis_binary

# Requests (each with its retries) the senders keep open at once: the offered rate slows down
# when relay does. Unbounded, thousands of requests queue inside httpx's connection pool, whose
# bookkeeping is quadratic in them, and retries wait behind new requests until they give up.
IN_FLIGHT = 64


@dataclass
class Config:
    callbacks: int = 5000
    runs: int = 1000
    rate: float = 150.0  # callbacks per second
    subscribers: int = 4
    fault_every: tuple[float, float] = (3.0, 8.0)  # seconds between faults, uniform
    redis_down: float = 0.5  # seconds Redis stays dead before it is restarted
    claim_timeout: float = 2.0
    finish_after: int = 3  # a tracked run succeeds at its N-th poll
    drain_timeout: float = 180.0
    appendfsync: str = "always"
    seed: int | None = None
    faults: str = "both"  # which faults to inject: both, worker, redis


@dataclass
class Faults:
    worker_kills: int = 0
    redis_restarts: int = 0
    redis_down_seconds: list[float] = field(default_factory=list)  # kill to PONG, each time
    log: list[str] = field(default_factory=list)


class ChaosStack:
    """Every process of the run; workers and Redis can be killed and replaced while it runs."""

    def __init__(self, cfg: Config, children: Children, workdir: Path) -> None:
        self.cfg, self.children, self.workdir = cfg, children, workdir
        self.api_key = "chaos-" + secrets.token_hex(16)
        self.runflow_secret = "whsec_chaos_" + secrets.token_hex(8)
        self.webs: list[Child] = []
        self.workers: list[Child] = []
        self.subscribers: dict[str, str] = {}  # name -> base URL
        self.env: dict[str, str] = {}
        self.redis: Child | None = None
        self.redis_port = 0
        self.lock = threading.Lock()

    @property
    def bases(self) -> list[str]:
        return [f"http://127.0.0.1:{w.name.rpartition(':')[2]}" for w in self.webs]

    def start(self) -> None:
        self._start_redis()
        fake_port = free_port()
        fake = self.children.start("fake-betterprompt", python_module(
            "bench.fakeprovider", "--port", str(fake_port),
            "--finish-after", str(self.cfg.finish_after)), clean_env())
        wait_until(http_ready(f"http://127.0.0.1:{fake_port}/stats", fake), 30, "fake provider")
        claim = self.cfg.claim_timeout
        self.env = clean_env(
            REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            RELAY_SECRET_KEY=secrets.token_hex(16), RELAY_API_KEYS=self.api_key,
            RUNFLOW_CALLBACK_SECRETS=self.runflow_secret, RELAY_ALLOW_PRIVATE_TARGETS="true",
            RELAY_LOG_LEVEL="warning", RELAY_LOG_FORMAT="json",
            RELAY_CLAIM_TIMEOUT=str(claim), RELAY_DELIVERY_TIMEOUT=str(claim * 0.75),
            RELAY_RETRY_SCHEDULE="1,2,4,8,15,30,60", RELAY_RETRY_JITTER="0.2",
            BETTERPROMPT_API_KEY="chaos-bp-key",
            BETTERPROMPT_BASE_URL=f"http://127.0.0.1:{fake_port}",
            BETTERPROMPT_RATE_LIMIT="100000", RELAY_POLL_MIN_INTERVAL="0.3",
            RELAY_POLL_MAX_INTERVAL="1",
        )
        for _ in range(2):
            port = free_port()
            web = self.children.start(f"relay-web:{port}", python_module(
                "relay", "web", "--host", "127.0.0.1"), {**self.env, "PORT": str(port)})
            self.webs.append(web)
        for web, base in zip(self.webs, self.bases, strict=True):
            wait_until(http_ready(f"{base}/readyz", web), 30, "relay web")
        for n in range(self.cfg.subscribers):
            self._start_subscriber(f"sub-{n + 1}")
        self.workers = [self._start_worker() for _ in range(2)]
        # Runs are accepted once a live worker polls BetterPrompt: wait for both heartbeats.
        wait_until(self._workers_live, 30, "relay workers")

    def _workers_live(self) -> bool:
        try:
            return "relay_workers 2.0" in httpx.get(f"{self.bases[0]}/metrics", timeout=0.5).text
        except httpx.HTTPError:
            return False

    def _start_redis(self) -> None:
        started = time.monotonic()
        self.redis, url = start_redis(self.children, redis_binary(), self.workdir / "redis",
                                      port=self.redis_port or None,
                                      appendfsync=self.cfg.appendfsync)
        self.redis_port = int(url.rsplit(":", 1)[1].split("/")[0])
        self._redis_ready_in = time.monotonic() - started

    def _start_subscriber(self, name: str) -> None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        answer = httpx.post(f"{self.bases[0]}/v1/subscriptions",
                            headers={"authorization": f"Bearer {self.api_key}"},
                            json={"url": f"{url}/hook", "description": name}, timeout=10)
        if answer.status_code != 201:
            raise BenchError(f"POST /v1/subscriptions answered {answer.status_code}: "
                             f"{answer.text[:300]}")
        child = self.children.start(name, python_module(
            "bench.subscriber", "--port", str(port)),
            clean_env(BENCH_SUBSCRIBER_SECRET=answer.json()["secret"]))
        wait_until(http_ready(f"{url}/", child), 30, name)
        self.subscribers[name] = url

    def _start_worker(self) -> Child:
        return self.children.start("relay-worker", python_module("relay", "worker"), self.env)

    # ---- faults ------------------------------------------------------------------------

    def kill_worker(self, index: int, faults: Faults) -> None:
        with self.lock:
            victim = self.workers[index]
            self.children.kill(victim)
            self.workers[index] = self._start_worker()
            faults.worker_kills += 1
            faults.log.append(f"{time.strftime('%H:%M:%S')} SIGKILL worker pid "
                              f"{victim.proc.pid}, started pid {self.workers[index].proc.pid}")

    def restart_redis(self, faults: Faults) -> None:
        with self.lock:
            assert self.redis is not None
            killed = time.monotonic()
            self.children.kill(self.redis)
            time.sleep(self.cfg.redis_down)
            self._start_redis()
            down = time.monotonic() - killed
            faults.redis_restarts += 1
            faults.redis_down_seconds.append(round(down, 2))
            faults.log.append(f"{time.strftime('%H:%M:%S')} SIGKILL redis, back from its AOF "
                              f"after {down:.2f} s")

    def problems(self) -> list[str]:
        """Processes that died on their own: the run only kills workers and Redis itself."""
        with self.lock:
            return [f"{c.name} exited with {c.proc.returncode}:\n{c.log_tail(15)}"
                    for c in self.children.started if not c.alive()]


def inject_faults(stack: ChaosStack, faults: Faults, stop: threading.Event,
                  rng: random.Random) -> None:
    """Until `stop`: a worker SIGKILL first, then a Redis restart, then either at random."""
    lo, hi = stack.cfg.fault_every
    kinds = stack.cfg.faults
    n = 0
    while not stop.wait(rng.uniform(lo, hi)):
        if kinds == "worker" or (kinds == "both" and (n == 0 or (n > 1 and rng.random() < 0.5))):
            stack.kill_worker(rng.randrange(len(stack.workers)), faults)
        else:
            stack.restart_redis(faults)
        n += 1


@dataclass
class Result:
    config: dict[str, Any]
    sent: dict[str, Any]
    faults: Faults
    reconciled: Reconciled
    load_seconds: float
    problems: list[str]

    @property
    def ok(self) -> bool:
        r = self.reconciled
        return (r.lost == 0 and r.runs_finished == r.runs_tracked
                and r.runs_with_one_terminal_event == r.runs_finished
                and not any(s.bad_signatures for s in r.subscribers) and not self.problems)


async def _traffic(stack: ChaosStack, sent: Sent) -> float:
    cfg = stack.cfg
    seconds = cfg.callbacks / cfg.rate
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    gate = asyncio.Semaphore(IN_FLIGHT)
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        started = time.monotonic()
        progress = asyncio.create_task(_progress(sent, cfg, started))
        await asyncio.gather(
            send_callbacks(client, stack.bases, stack.runflow_secret, cfg.callbacks, cfg.rate,
                           sent, gate),
            track_runs(client, stack.bases, stack.api_key, cfg.runs, seconds, sent, gate))
        progress.cancel()
        return time.monotonic() - started


async def _progress(sent: Sent, cfg: Config, started: float) -> None:
    """A line on stderr every 10 s, so that a long run shows it is moving."""
    while True:
        await asyncio.sleep(10)
        print(f"{time.monotonic() - started:5.0f} s: accepted {len(sent.accepted):,}/"
              f"{cfg.callbacks:,} callbacks, tracked {len(sent.tracked):,}/{cfg.runs:,} runs, "
              f"answers {dict(sent.answers)}", file=sys.stderr, flush=True)


async def _reconcile(stack: ChaosStack, sent: Sent) -> Reconciled:
    async with httpx.AsyncClient(timeout=30) as client:
        checker = Reconciler(client, stack.bases[0], stack.api_key, stack.subscribers, sent)
        drained = await checker.drain(stack.cfg.drain_timeout)
        return await checker.result(drained)


def run(cfg: Config, children: Children, workdir: Path) -> Result:
    rng = random.Random(cfg.seed)
    stack = ChaosStack(cfg, children, workdir)
    stack.start()
    faults, sent, stop = Faults(), Sent(), threading.Event()
    took: list[float] = []

    def traffic() -> None:
        try:
            took.append(asyncio.run(_traffic(stack, sent)))
        finally:
            stop.set()

    # Faults are injected from the main thread because the processes they start must outlive
    # the thread that started them: Linux delivers PR_SET_PDEATHSIG when that *thread* exits.
    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        inject_faults(stack, faults, stop, rng)
    finally:
        stop.set()  # on Ctrl-C the daemon sender is simply abandoned
    sender.join()
    if not took:
        raise BenchError("the traffic thread failed; see its traceback above")
    load_seconds = took[0]
    reconciled = asyncio.run(_reconcile(stack, sent))
    problems = stack.problems()
    problems += [f"{n} answers {k}" for k, n in sent.answers.items()
                 if k not in ("200", "201", "503", "connect", "timeout")]
    problems += [f"gave up on {w}" for w in sent.gave_up[:5]]
    sent_doc = {"answers": dict(sent.answers), "duplicate_answers": sent.duplicate_answers,
                "gave_up": len(sent.gave_up)}
    return Result(asdict(cfg), sent_doc, faults, reconciled, round(load_seconds, 1), problems)


def render(r: Result) -> str:
    c, rec, f = r.config, r.reconciled, r.faults
    answers = r.sent["answers"]
    down = f.redis_down_seconds
    lines = [
        f"chaos run: 2 relay web, 2 relay worker, {len(rec.subscribers)} subscribers, "
        f"Redis AOF appendfsync {c['appendfsync']}, RELAY_CLAIM_TIMEOUT {c['claim_timeout']:g} s",
        f"traffic: {c['callbacks']:,} Runflow callbacks offered at {c['rate']:g}/s "
        f"(taken at {rec.callbacks_accepted / max(r.load_seconds, 1e-9):.0f}/s) and "
        f"{c['runs']:,} tracked BetterPrompt runs over {r.load_seconds:g} s",
        f"answers: {answers.get('200', 0):,} x 200, {answers.get('201', 0):,} x 201, "
        f"{answers.get('503', 0):,} x 503, {answers.get('connect', 0):,} connection errors, "
        f"{answers.get('timeout', 0):,} timeouts; {r.sent['duplicate_answers']} retries answered "
        f"duplicate; gave up on {r.sent['gave_up']}",
        f"faults: {f.worker_kills} worker SIGKILLs, {f.redis_restarts} Redis SIGKILL + restart "
        f"from AOF" + (f" (down {min(down):.1f}-{max(down):.1f} s)" if down else ""),
        f"callbacks accepted {rec.callbacks_accepted:,}; runs tracked {rec.runs_tracked:,}, "
        f"finished {rec.runs_finished:,}, with exactly one terminal event "
        f"{rec.runs_with_one_terminal_event:,} (run events: "
        f"{', '.join(f'{n:,} {t}' for t, n in sorted(rec.run_event_types.items()))})",
        f"drained {rec.drain_seconds:g} s after the last request",
        "",
        f"{'subscriber':<12}{'accepted':>10}{'delivered':>11}{'duplicates':>12}{'lost':>7}"
        f"{'bad sig':>9}",
    ]
    for s in rec.subscribers:
        lines.append(f"{s.name:<12}{s.expected:>10,}{s.delivered:>11,}{s.duplicates:>12,}"
                     f"{s.lost:>7,}{s.bad_signatures:>9,}")
    total = sum(s.expected for s in rec.subscribers)
    lines.append(f"{'total':<12}{total:>10,}{rec.delivered:>11,}{rec.duplicates:>12,}"
                 f"{rec.lost:>7,}{sum(s.bad_signatures for s in rec.subscribers):>9,}")
    lines += ["", f"lost: {rec.lost}" + ("" if r.ok else "   NOT OK")]
    lines += [f"problem: {p}" for p in r.problems]
    lines += [f"lost event as relay sees it: {json.dumps(e)[:600]}" for e in rec.lost_events]
    lines += [f"run with a repeated event type: {json.dumps(e)[:800]}" for e in rec.repeated]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[Config, Path | None, bool]:
    p = argparse.ArgumentParser(prog="python -m bench.chaos",
                                description=(__doc__ or "").split("\n\n")[1],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = Config()
    p.add_argument("--callbacks", type=int, default=d.callbacks, help="Runflow callbacks")
    p.add_argument("--runs", type=int, default=d.runs, help="tracked BetterPrompt runs")
    p.add_argument("--rate", type=float, default=d.rate, help="callbacks per second")
    p.add_argument("--subscribers", type=int, default=d.subscribers)
    p.add_argument("--fault-every", type=float, nargs=2, default=d.fault_every,
                   metavar=("MIN", "MAX"), help="seconds between two faults, uniform")
    p.add_argument("--redis-down", type=float, default=d.redis_down,
                   help="seconds Redis stays dead before its restart")
    p.add_argument("--claim-timeout", type=float, default=d.claim_timeout,
                   help="RELAY_CLAIM_TIMEOUT of the workers")
    p.add_argument("--finish-after", type=int, default=d.finish_after,
                   help="a tracked run succeeds at its N-th poll")
    p.add_argument("--drain-timeout", type=float, default=d.drain_timeout,
                   help="longest wait for delivery after the traffic ends")
    p.add_argument("--appendfsync", choices=["always", "everysec", "no"], default=d.appendfsync)
    p.add_argument("--seed", type=int, help="seed of the fault schedule")
    p.add_argument("--faults", choices=["both", "worker", "redis"], default=d.faults,
                   help="which processes to kill")
    p.add_argument("--keep-logs", action="store_true", help="print where the logs are kept")
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    a = p.parse_args(argv)
    if a.callbacks < 1 or a.runs < 0 or a.rate <= 0 or a.subscribers < 1:
        p.error("--callbacks and --subscribers must be >= 1, --runs >= 0, --rate > 0")
    if not 0 < a.fault_every[0] <= a.fault_every[1]:
        p.error("--fault-every takes 0 < MIN <= MAX")
    cfg = Config(a.callbacks, a.runs, a.rate, a.subscribers, tuple(a.fault_every), a.redis_down,
                 a.claim_timeout, a.finish_after, a.drain_timeout, a.appendfsync, a.seed,
                 a.faults)
    return cfg, a.out, a.keep_logs


def main(argv: list[str] | None = None) -> int:
    cfg, out, keep_logs = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="relay-chaos-"))
    children = Children(tmp)
    try:
        result = run(cfg, children, tmp)
    except BenchError as exc:
        print(f"bench.chaos: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench.chaos: interrupted; stopping every process it started",
              file=sys.stderr)
        return 130
    finally:
        children.close()
        if keep_logs:
            print(f"logs: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(render(result), flush=True)
    if out is not None:
        doc = {"ok": result.ok, "lost": result.reconciled.lost,
               "duplicates": result.reconciled.duplicates, **asdict(result)}
        out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
