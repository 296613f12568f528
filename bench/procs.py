"""Child processes of the benchmark: started in their own session, always stopped."""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent.parent
_PR_SET_PDEATHSIG = 1


class BenchError(RuntimeError):
    """A part of the benchmark could not run; the message says which and why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise BenchError(f"{what}: not ready within {timeout:.0f} s")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGKILL this child if the benchmark itself is killed without cleanup."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (Linux /proc), 0 when unavailable."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        """Resident set size of the process now (Linux /proc), 0 when unavailable."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return 0

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def problems(self) -> list[str]:
        """Log lines at warning level or above (relay logs JSON with a `level` field)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        bad = ('"level": "warning"', '"level": "error"', '"level": "critical"', "Traceback")
        return [line for line in text.splitlines() if any(b in line for b in bad)]


@dataclass
class Children:
    """Every process the benchmark starts; `close()` stops whatever is still running."""

    log_dir: Path
    started: list[Child] = field(default_factory=list)
    # Processes that ignored SIGTERM for `timeout` seconds and had to be killed.
    forced: list[str] = field(default_factory=list)
    count: int = 0  # processes ever started: numbers the log files, which must not collide

    def start(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> Child:
        log_path = self.log_dir / f"{name}-{self.count}.log"
        self.count += 1
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                list(args), env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
            )
        child = Child(name, proc, log_path)
        self.started.append(child)
        return child

    def stop(self, child: Child, timeout: float = 6.0) -> None:
        """SIGTERM to the child's process group, SIGKILL if it is still there after `timeout`."""
        if child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGTERM)
            try:
                child.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.forced.append(f"{child.name} was still running {timeout:g} s after SIGTERM "
                                   "and was killed")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
        if child in self.started:
            self.started.remove(child)

    def kill(self, child: Child) -> None:
        """SIGKILL the child's process group, as a crash would: no clean-up runs."""
        if child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGKILL)
        child.proc.wait()
        if child in self.started:
            self.started.remove(child)

    def close(self) -> None:
        for child in reversed(list(self.started)):
            self.stop(child, timeout=3.0)


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]  # total, idle + iowait


def cpu_busy(seconds: float = 1.0) -> float | None:
    """Fraction of all CPUs busy over `seconds` (Linux /proc/stat); None when unknown."""
    try:
        total0, idle0 = _cpu_times()
        time.sleep(seconds)
        total1, idle1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    return 1 - (idle1 - idle0) / (total1 - total0) if total1 > total0 else None


def _own_cpu_seconds() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


class CpuWindow:
    """Machine CPU use over a window, split into the benchmark's and everything else's.

    The benchmark's share is this process, its reaped children (wrk) and `procs`, which must
    still be running when `close()` is called. Figures are in CPUs (0 to os.cpu_count()).
    """

    def __init__(self, procs: Sequence[Child]) -> None:
        self.procs = list(procs)
        self.started = time.monotonic()
        self.machine = _cpu_times()
        self.own = _own_cpu_seconds() + sum(c.cpu_seconds() for c in self.procs)

    def close(self) -> tuple[float, float]:
        """(busy CPUs, CPUs used by processes that are not the benchmark's)."""
        wall = max(time.monotonic() - self.started, 1e-6)
        total, idle = _cpu_times()
        busy = ((total - self.machine[0]) - (idle - self.machine[1])) / os.sysconf("SC_CLK_TCK")
        own = _own_cpu_seconds() + sum(c.cpu_seconds() for c in self.procs) - self.own
        return busy / wall, max(0.0, busy - own) / wall


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def http_ready(url: str, child: Child) -> Callable[[], bool]:
    def check() -> bool:
        if not child.alive():
            raise BenchError(f"{child.name} exited with {child.proc.returncode}:\n"
                             f"{child.log_tail()}")
        try:
            return httpx.get(url, timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def start_redis(children: Children, binary: str, workdir: Path, *, port: int | None = None,
                appendfsync: str = "everysec") -> tuple[Child, str]:
    """redis-server: no RDB, AOF (fsync every second by default), data in `workdir`.

    Given the `port` and `workdir` of a Redis that was killed, it restarts that Redis from its
    append-only file.
    """
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    child = children.start("redis", [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
        "--save", "", "--appendonly", "yes", "--appendfsync", appendfsync,
        "--maxmemory-policy", "noeviction", "--daemonize", "no",
    ])

    def answers() -> bool:
        if not child.alive():
            raise BenchError(f"redis-server exited:\n{child.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    wait_until(answers, 10, "redis-server")
    return child, f"redis://127.0.0.1:{port}/0"


# The repository root: the folder that holds the `bench` package.
_ROOT = Path(__file__).resolve().parent.parent


def clean_env(**extra: str) -> dict[str, str]:
    """The benchmark's environment without any inherited relay or provider settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RELAY_", "RUNFLOW_", "FLORA_", "BETTERPROMPT_", "REDIS_"))}
    env["PYTHONUNBUFFERED"] = "1"
    # The suite's own modules (`python -m bench.sink`) are found from any working directory.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env
