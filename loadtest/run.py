"""Start ctrserve on 127.0.0.1, run a bounded headless locust test against it, report.

    .venv/bin/python -m loadtest.run --users 50 --duration 30

Writes locust's CSV stats to loadtest/results/ and exits non-zero if any request failed.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

from support.servers import ROOT, cache_counts, server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models/default")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--spawn-rate", type=int, default=25)
    parser.add_argument("--duration", type=int, default=30, help="seconds (bounded)")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest/results/run")
    args = parser.parse_args()
    args.model_dir = args.model_dir.resolve()  # servers under test start in an empty directory
    args.out.parent.mkdir(parents=True, exist_ok=True)
    env = {"CTR_MODEL_REPOSITORY": str(args.model_dir)}
    with server([sys.executable, "-m", "app"], env) as base:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(ROOT / "loadtest/locustfile.py"),
                "--headless",
                "-u",
                str(args.users),
                "-r",
                str(args.spawn_rate),
                "-t",
                f"{args.duration}s",
                "--host",
                base,
                "--csv",
                str(args.out),
                "--only-summary",
                "--stop-timeout",
                "5",
            ],
            cwd=ROOT,
            env={**os.environ, **env},
            check=False,
        )
        hits, misses = cache_counts(base)
    with open(f"{args.out}_stats.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            sys.stdout.write(
                f"{row['Name']:<18} requests {row['Request Count']:>7}  failures "
                f"{row['Failure Count']:>4}  req/s {float(row['Requests/s']):8.1f}  "
                f"p50 {row['50%']:>4} ms  p99 {row['99%']:>4} ms\n"
            )
    sys.stdout.write(
        f"cache hit ratio {hits / max(hits + misses, 1.0):.1%} "
        f"({hits:,.0f} hits, {misses:,.0f} misses, rows counted)\n"
    )
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
