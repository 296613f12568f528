"""wrk as the load generator: a Lua script that replays pre-signed callbacks, once each."""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.procs import BenchError, Child, Children

INSTALL_HINT = "bench: wrk is not installed; install it with `apt-get install -y wrk`"

# setup() runs in wrk's main Lua state, init()/request()/response() in each thread's state,
# done() in the main state again: it sums what the threads counted through thread:get().
LUA = r"""
local threads = {}
local nthreads = 0

function setup(thread)
   thread:set("tid", nthreads)
   nthreads = nthreads + 1
   table.insert(threads, thread)
end

function init(args)
   local file, path, every = args[1], args[2], tonumber(args[3])
   local host = wrk.headers["Host"]
   reqs = {}
   count, idx, sent, wrapped, non2xx, first_bad = 0, 0, 0, 0, 0, ""
   local line_no = 0
   for line in io.lines(file) do
      if line_no % every == tid then
         local tab = string.find(line, "\t", 1, true)
         local headers = {
            ["Host"] = host,
            ["Content-Type"] = "application/json",
            ["Runflow-Signature"] = string.sub(line, 1, tab - 1),
         }
         count = count + 1
         reqs[count] = wrk.format("POST", path, headers, string.sub(line, tab + 1))
      end
      line_no = line_no + 1
   end
   if count == 0 then
      error("no requests for thread " .. tid .. " in " .. file)
   end
end

function request()
   idx = idx + 1
   sent = sent + 1
   if idx > count then
      idx = 1
      wrapped = wrapped + 1
   end
   return reqs[idx]
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
      if first_bad == "" then
         first_bad = status .. " " .. (string.gsub(string.sub(body or "", 1, 300), "%c", " "))
      end
   end
end

function done(summary, latency, requests)
   local sent, count, wrapped, non2xx, bad = 0, 0, 0, 0, ""
   for _, t in ipairs(threads) do
      sent = sent + t:get("sent")
      count = count + t:get("count")
      wrapped = wrapped + t:get("wrapped")
      non2xx = non2xx + t:get("non2xx")
      if bad == "" then bad = t:get("first_bad") end
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "sent": %d, ' ..
      '"loaded": %d, "wrapped": %d, "non2xx": %d, "status_errors": %d, ' ..
      '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, ' ..
      '"p50_us": %d, "p90_us": %d, "p99_us": %d, "p999_us": %d, "mean_us": %.1f, ' ..
      '"max_us": %d}\n',
      summary.requests, summary.duration, summary.bytes, sent, count, wrapped, non2xx,
      e.status, e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.mean, latency.max))
   if bad ~= "" then
      io.write("BENCH_FIRST_BAD " .. bad .. "\n")
   end
end
"""


@dataclass
class WrkResult:
    """One wrk run; `requests` are completed responses, latencies in microseconds.

    `rps` counts 2xx answers only (callbacks accepted per second); `all_rps` counts every
    answer, as wrk's own Requests/sec does. They differ only in an invalid run.
    """

    requests: int
    seconds: float
    rps: float
    all_rps: float
    p50_us: int
    p90_us: int
    p99_us: int
    p999_us: int
    mean_us: float
    max_us: int
    non2xx: int
    socket_errors: int
    repeats: int
    first_bad: str

    @property
    def valid(self) -> bool:
        return self.non2xx == 0 and self.socket_errors == 0 and self.repeats == 0

    def problems(self) -> list[str]:
        out = []
        if self.non2xx:
            out.append(f"{self.non2xx} non-2xx answers (first: {self.first_bad or '?'})")
        if self.socket_errors:
            out.append(f"{self.socket_errors} socket errors/timeouts")
        if self.repeats:
            out.append(f"{self.repeats} requests repeated a callback (request file too short)")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "valid": self.valid}


def write_script(directory: Path) -> Path:
    path = directory / "replay.lua"
    path.write_text(LUA)
    return path


def start(children: Children, *, base_url: str, path: str, script: Path, requests_file: Path,
          threads: int, connections: int, duration: float) -> Child:
    """wrk POSTing to `base_url` + `path`, running; `collect` waits for it and parses it."""
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--timeout", "5s",
            "-s", str(script), base_url, "--", str(requests_file), path, str(threads)]
    return children.start("wrk", args)


def run(children: Children, *, base_url: str, path: str, script: Path, requests_file: Path,
        threads: int, connections: int, duration: float) -> WrkResult:
    """wrk POSTing to `base_url` + `path`; parses what the Lua `done` printed."""
    child = start(children, base_url=base_url, path=path, script=script,
                  requests_file=requests_file, threads=threads, connections=connections,
                  duration=duration)
    return collect(children, child, base_url=base_url, duration=duration)


def collect(children: Children, child: Child, *, base_url: str, duration: float) -> WrkResult:
    try:
        # Loading the request file happens before wrk's clock starts; allow for it.
        child.proc.wait(duration + 120)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish:\n{child.log_tail()}") from exc
    finally:
        children.stop(child)
    output = child.log_path.read_text(errors="replace")
    doc: dict[str, Any] | None = None
    first_bad = ""
    for line in output.splitlines():
        if line.startswith("BENCH_JSON "):
            doc = json.loads(line.removeprefix("BENCH_JSON "))
        elif line.startswith("BENCH_FIRST_BAD "):
            first_bad = line.removeprefix("BENCH_FIRST_BAD ").strip()
    if doc is None or child.proc.returncode != 0:
        raise BenchError(f"wrk failed (exit {child.proc.returncode}) against {base_url}:\n"
                         f"{output[-2000:]}")
    seconds = doc["duration_us"] / 1e6
    socket_errors = sum(doc[k] for k in ("connect_errors", "read_errors", "write_errors",
                                         "timeouts"))
    return WrkResult(
        requests=doc["requests"], seconds=seconds, all_rps=doc["requests"] / seconds,
        rps=(doc["requests"] - max(doc["non2xx"], doc["status_errors"])) / seconds,
        p50_us=doc["p50_us"], p90_us=doc["p90_us"], p99_us=doc["p99_us"],
        p999_us=doc["p999_us"], mean_us=doc["mean_us"], max_us=doc["max_us"],
        non2xx=max(doc["non2xx"], doc["status_errors"]), socket_errors=socket_errors,
        repeats=max(0, doc["sent"] - doc["loaded"]), first_bad=first_bad,
    )
