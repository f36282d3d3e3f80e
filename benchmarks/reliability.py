"""The reliability suite: every check of docs/RELIABILITY.md, measured in one run on 127.0.0.1.

    make reliability      # or: .venv/bin/python -m benchmarks.reliability

Fuzzing (schemathesis, hypothesis), limits, faults at start-up and reload, reload under
load, bounded memory, graceful shutdown and security checks. Every figure in the report is
produced here; bounded durations and request counts only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx2 as httpx

from app.repository.store import ModelRepository
from support.payloads import load_spec, random_rows, unique_rows

if TYPE_CHECKING:
    from schemathesis.core.errors import InvalidSchema
    from schemathesis.core.result import Err, Ok
    from schemathesis.schemas import APIOperation
from support.reports import machine, markdown_section, relative
from support.servers import ROOT, listening_process, server
from support.shutdown import sigterm_during_a_request
from support.wrk import write_bodies, wrk

logger = logging.getLogger("reliability")
APP = [sys.executable, "-m", "app"]
TOKEN = "reliability-suite-token"
AUTH_HEADERS = {"Authorization": f"Bearer {TOKEN}"}
# The suite's parameters; the report's prose takes them from here.
CONNECTIONS = 16
RELOAD_EVERY_S = 0.5
FLOOD_BATCH_ROWS = 2000


class Report:
    def __init__(self) -> None:
        self.sections: list[str] = []

    def table(self, title: str, intro: str, header: list[str], rows: list[list[str]]) -> None:
        section = markdown_section(title, intro, header, rows)
        self.sections.append(section)
        logger.info("\n%s", section)


def _operation(result: Ok[APIOperation] | Err[InvalidSchema]) -> APIOperation:
    """One operation of the service's schema; a part the schema tool could not read stops
    the run with its error."""
    from schemathesis.core.result import Err

    if isinstance(result, Err):
        raise result.err()
    return result.ok()


def fuzzing(report: Report, model_dir: Path, examples: int) -> None:
    import schemathesis
    from fastapi.testclient import TestClient

    from app.core.config import Settings
    from app.main import create_app

    rows = []
    # Reload cases move CURRENT: fuzz a copy of the repository, never the user's own.
    with _scratch_repository(model_dir) as (repository, _, _):
        app = create_app(Settings(model_dir=repository, reload_token=TOKEN, log_level="ERROR"))
        with TestClient(app):
            schema = schemathesis.openapi.from_asgi("/openapi.json", app)
            operations = [_operation(result) for result in schema.get_all_operations()]
            for mode in ("positive", "negative"):
                for operation in operations:
                    if mode == "negative" and not operation.body:
                        continue
                    statuses: dict[int, int] = {}
                    _fuzz_operation(operation, mode, examples, statuses)
                    cases = sum(statuses.values())
                    errors = sum(n for code, n in statuses.items() if code >= 500)
                    codes = ", ".join(f"{c}: {n}" for c, n in sorted(statuses.items()))
                    name = f"{operation.method.upper()} {operation.path}"
                    rows.append([name, mode, str(cases), str(errors), codes])
    report.table(
        "Fuzzing the HTTP API (schemathesis)",
        f"Requests generated from the service's own OpenAPI schema, up to {examples} per "
        "operation and mode; positive cases follow the schema, negative ones break it.",
        ["operation", "mode", "cases", "5xx", "status codes"],
        rows,
    )


def _fuzz_operation(operation: object, mode: str, examples: int, statuses: dict[int, int]) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    strategy = operation.as_strategy(schemathesis.GenerationMode(mode))  # type: ignore[attr-defined]

    @given(case=strategy)
    @settings(
        max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def call(case: object) -> None:
        # with the operator's token, so /admin/reload's body is fuzzed too, not just its auth
        code = case.call(headers=AUTH_HEADERS).status_code  # type: ignore[attr-defined]
        statuses[code] = statuses.get(code, 0) + 1

    call()


def encoder_fuzzing(report: Report, examples: int) -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from app.features.errors import EncodeError
    from support.fuzz import ENCODER
    from support.fuzz import rows as row_strategy

    outcome = {"encoded": 0, "refused": 0, "crashed": 0}

    @given(st.lists(row_strategy, min_size=1, max_size=5))
    @settings(max_examples=examples, deadline=None, database=None)
    def run(batch: list[dict[str, object]]) -> None:
        try:
            ENCODER.encode_rows(batch)
            outcome["encoded"] += 1
        except EncodeError:
            outcome["refused"] += 1
        except Exception:
            outcome["crashed"] += 1

    run()
    report.table(
        "Fuzzing the encoder (hypothesis)",
        "Batches of rows with arbitrary JSON values (nested lists and objects, NaN, huge "
        "integers, any text) under known and unknown field names.",
        ["cases", "encoded", "refused with EncodeError", "any other exception"],
        [
            [
                str(sum(outcome.values())),
                str(outcome["encoded"]),
                str(outcome["refused"]),
                str(outcome["crashed"]),
            ]
        ],
    )


def v2_fuzzing(report: Report, model_dir: Path, examples: int) -> None:
    """The V2 infer framing: valid requests of a few rows with at most one fault each."""
    from fastapi.testclient import TestClient
    from hypothesis import HealthCheck, given, settings

    from app.core.config import Settings
    from app.main import create_app
    from support.fuzz import v2_requests

    statuses: dict[int, int] = {}
    with _scratch_repository(model_dir) as (repository, _, _):
        app = create_app(Settings(model_dir=repository, log_level="ERROR"))
        url = f"/v2/models/{repository.name}/infer"
        with TestClient(app) as client:

            @given(v2_requests())
            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(request: tuple[bytes, dict[str, str]]) -> None:
                body, headers = request
                code = client.post(url, content=body, headers=headers).status_code
                statuses[code] = statuses.get(code, 0) + 1

            run()
            alive = client.get("/v2/health/live").status_code == 200
    codes = ", ".join(f"{c}: {n}" for c, n in sorted(statuses.items()))
    errors = sum(n for code, n in statuses.items() if code >= 500)
    report.table(
        "Fuzzing the V2 infer framing (hypothesis)",
        "Valid Open Inference Protocol requests of 1-6 rows (JSON or binary tensors), each "
        "with at most one fault: truncated bodies, wrong or lying Inference-Header-Content-"
        "Length, wrong binary_data_size, unknown datatypes, bad shapes, unknown tensors, rows "
        "that disagree, junk after the last tensor.",
        ["cases", "5xx", "status codes", "server alive after"],
        [[str(sum(statuses.values())), str(errors), codes, "yes" if alive else "**no**"]],
    )


def hostile_bodies(report: Report, model_dir: Path, examples: int) -> None:
    """Deep nesting, long arrays and bodies at the size limit on every endpoint with a body."""
    from fastapi.testclient import TestClient
    from hypothesis import HealthCheck, given, settings

    from app.core.config import Settings
    from app.main import create_app
    from support.fuzz import BODY_ENDPOINTS, body_at
    from support.fuzz import hostile_bodies as strategy

    limit = 256 * 1024
    statuses: dict[str, dict[int, int]] = {endpoint: {} for endpoint in BODY_ENDPOINTS}
    with _scratch_repository(model_dir) as (repository, _, _):
        settings_ = Settings(
            model_dir=repository, max_body_bytes=limit, reload_token=TOKEN, log_level="ERROR"
        )
        with TestClient(create_app(settings_)) as client:

            def post(endpoint: str, body: bytes) -> None:
                url = endpoint.replace("{model}", repository.name)
                headers = {**AUTH_HEADERS, "content-type": "application/json"}
                code = client.post(url, content=body, headers=headers).status_code
                counts = statuses[endpoint]
                counts[code] = counts.get(code, 0) + 1

            @given(strategy(limit))
            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: tuple[str, bytes]) -> None:
                post(*case)

            run()
            for endpoint in BODY_ENDPOINTS:
                for size in (limit - 1, limit, limit + 1):
                    post(endpoint, body_at(size))
            alive = client.get("/healthz").status_code == 200
    rows = [
        [
            endpoint,
            str(sum(counts.values())),
            str(sum(n for code, n in counts.items() if code >= 500)),
            ", ".join(f"{c}: {n}" for c, n in sorted(counts.items())),
        ]
        for endpoint, counts in statuses.items()
    ]
    report.table(
        "Hostile bodies (hypothesis)",
        f"Objects, arrays or both nested up to 100,000 levels deep, and long arrays of "
        f"objects, at every place a body is read, {examples} cases in all; then bodies of "
        f"exactly the size limit (256 KiB here), one byte under and one over, on each "
        f"endpoint. Server alive after: {'yes' if alive else '**no**'}.",
        ["endpoint", "cases", "5xx", "status codes"],
        rows,
    )


def limits(report: Report, model_dir: Path) -> None:
    env = {
        "CTR_MODEL_REPOSITORY": str(model_dir),
        "CTR_MAX_BODY_BYTES": "65536",
        "CTR_MAX_BATCH_SIZE": "100",
        "CTR_MAX_VALUE_CHARS": "64",
    }
    checks = [
        ("body over CTR_MAX_BODY_BYTES (64 KiB here)", {"instances": [{"c0": "x" * 60}] * 1200}),
        ("batch over CTR_MAX_BATCH_SIZE (100 here)", {"instances": [{}] * 101}),
        ("string over CTR_MAX_VALUE_CHARS (64 here)", {"features": {"c0": "x" * 65}}),
        ("unknown field name", {"features": {"not_a_field": 1}}),
        ("empty batch", {"instances": []}),
        ("NaN value", None),
    ]
    rows = []
    with server(APP, env) as base, httpx.Client(timeout=10) as client:
        for name, payload in checks:
            if payload is None:
                response = client.post(
                    f"{base}/predict",
                    content=b'{"features":{"n0":NaN}}',
                    headers={"content-type": "application/json"},
                )
            else:
                response = client.post(f"{base}/predict", json=payload)
            detail = response.text[:110].replace("|", "/")
            rows.append([name, str(response.status_code), f"`{detail}`"])
    report.table(
        "Limits",
        "Each limit is a setting with a default (README, Settings); a live server answers:",
        ["request", "status", "answer (start)"],
        rows,
    )


def faults(report: Report, model_dir: Path) -> None:
    from support.faults import FAULTS, broken_copy  # needs the onnx package

    rows = []
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with tempfile.TemporaryDirectory() as scratch:
        env = {
            "CTR_MODEL_REPOSITORY": str(model_dir),
            "CTR_RELOAD_TOKEN": TOKEN,
            "CTR_PUBLISH_ROOT": scratch,
        }
        with server(APP, env) as base:
            serving = httpx.get(f"{base}/model", timeout=5).json()["version"]
            for index, fault in enumerate(sorted(FAULTS)):
                broken = broken_copy(model_dir, Path(scratch) / f"m{index}", fault)
                start = subprocess.run(
                    [sys.executable, "-m", "app"],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    env={**os.environ, "CTR_MODEL_REPOSITORY": str(broken), "CTR_PORT": "1"},
                )
                refused_at_start = start.returncode != 0 and FAULTS[fault][1] in start.stderr
                reload = httpx.post(
                    f"{base}/admin/reload",
                    headers=auth,
                    timeout=30,
                    json={"model_dir": str(broken)},
                )
                still = httpx.get(f"{base}/model", timeout=5).json()["version"] == serving
                scored = httpx.post(f"{base}/predict", json={"features": {}}, timeout=5)
                rows.append(
                    [
                        fault,
                        "refused" if refused_at_start else "**started**",
                        str(reload.status_code),
                        "yes" if still else "**no**",
                        str(scored.status_code),
                    ]
                )
        report.table(
            "Faults at start-up and reload",
            "Each broken copy of the model directory is started as a fresh service (it must "
            "refuse to start, naming the reason) and offered to a running service by "
            "POST /admin/reload (it must be refused while the old version keeps serving).",
            ["fault", "fresh start", "reload status", "old model still serving", "/predict after"],
            rows,
        )


@contextmanager
def _scratch_repository(model_dir: Path) -> Iterator[tuple[Path, str, str]]:
    """A copy of the repository with a second version in it: (repository, first, second).

    Reloads move CURRENT, so they run on a copy, never on the user's own repository.
    """
    from support.faults import second_version

    with tempfile.TemporaryDirectory() as scratch:
        repository = Path(shutil.copytree(model_dir, Path(scratch) / "default"))
        first = ModelRepository(repository).current_version()
        second = ModelRepository(repository).publish(
            second_version(repository, Path(scratch) / "v2")
        )
        yield repository, first, second


def _predict_total(base: str, poll_interval_s: float) -> float:
    """/predict answers counted by /metrics, once every worker has flushed its tally."""
    time.sleep(2 * poll_interval_s)
    text = httpx.get(f"{base}/metrics", timeout=10).text
    pattern = r'ctr_request_latency_seconds_count\{endpoint="/predict",status="2xx"\} (\S+)'
    return sum(float(value) for value in re.findall(pattern, text))


def reload_under_load(report: Report, model_dir: Path, duration_s: int) -> None:
    rows_out = []
    spec = load_spec(model_dir)
    bodies = write_bodies([{"features": r} for r in random_rows(spec, 50_000, seed=4)])
    for workers in (1, 2):
        with _scratch_repository(model_dir) as (repository, first, second):
            env = {
                "CTR_MODEL_REPOSITORY": str(repository),
                "CTR_RELOAD_TOKEN": TOKEN,
                "CTR_WORKERS": str(workers),
                "CTR_POLL_INTERVAL_S": str(RELOAD_EVERY_S),
            }
            with server(APP, env) as base:
                row = _reload_while_loaded(base, bodies, duration_s, first, second)
                rows_out.append([str(workers), *row])
    report.table(
        "Hot reload under load",
        f"wrk for {duration_s} s ({CONNECTIONS} connections) while POST /admin/reload moves "
        f"CURRENT between two versions every {RELOAD_EVERY_S} s; a second client checks that "
        "every answer names the "
        "version that scored it. With 2 workers the reload reaches one worker, which writes "
        f"CURRENT; the other follows it at its next poll (CTR_POLL_INTERVAL_S={RELOAD_EVERY_S}). "
        "/predict "
        "answers counted by /metrics (every worker summed) against the requests both clients "
        "completed; wrk does not count the requests still in flight when it stops.",
        [
            "workers",
            "requests (wrk + checker)",
            "failed requests",
            "reloads ok / failed",
            "answers without a version",
            "versions seen",
            "/predict answers in /metrics",
        ],
        rows_out,
    )


def _reload_while_loaded(
    base: str, bodies: Path, duration_s: int, first: str, second: str
) -> list[str]:
    versions: set[str] = set()
    bad: list[str] = []
    checked = [0]
    reloads = {"ok": 0, "failed": 0}
    stop = threading.Event()

    def checker() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                response = client.post(
                    f"{base}/predict", json={"features": {"c0": f"c0_{checked[0] % 97}"}}
                )
                body = response.json() if response.status_code == 200 else {}
                if "model_version" not in body:
                    bad.append(f"{response.status_code}")
                else:
                    versions.add(body["model_version"])
                checked[0] += 1

    def reloader() -> None:
        targets = [second, first]
        i = 0
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.post(
                    f"{base}/admin/reload", headers=AUTH_HEADERS, json={"version": targets[i % 2]}
                )
                reloads["ok" if response.status_code == 200 else "failed"] += 1
                i += 1
                stop.wait(RELOAD_EVERY_S)

    threads = [threading.Thread(target=checker), threading.Thread(target=reloader)]
    for thread in threads:
        thread.start()
    result = wrk(f"{base}/predict", bodies, duration_s, connections=CONNECTIONS)
    stop.set()
    for thread in threads:
        thread.join()
    sent = result.requests + checked[0]
    return [
        f"{sent:,}",
        str(result.errors),
        f"{reloads['ok']} / {reloads['failed']}",
        str(len(bad)),
        str(len(versions)),
        f"{_predict_total(base, RELOAD_EVERY_S):,.0f}",
    ]


def fleet_rollout(report: Report, model_dir: Path, rounds: int) -> None:
    """2 workers: after one reload, how long until fresh connections all see the new version."""
    rows_out = []
    with _scratch_repository(model_dir) as (repository, first, second):
        env = {
            "CTR_MODEL_REPOSITORY": str(repository),
            "CTR_RELOAD_TOKEN": TOKEN,
            "CTR_WORKERS": "2",
            "CTR_POLL_INTERVAL_S": "2",
        }
        with server(APP, env) as base:
            sent = 0
            for round_ in range(rounds):
                target = second if round_ % 2 == 0 else first
                started = time.monotonic()
                response = httpx.post(
                    f"{base}/admin/reload",
                    headers=AUTH_HEADERS,
                    json={"version": target},
                    timeout=30,
                )
                response.raise_for_status()
                streak = 0
                old_answers = 0
                while streak < 50:
                    answer = httpx.post(
                        f"{base}/predict", json={"features": {"c0": "c0_1"}}, timeout=10
                    ).json()
                    sent += 1
                    if answer["model_version"] == target:
                        streak += 1
                    else:
                        streak, old_answers = 0, old_answers + 1
                    if time.monotonic() - started > 30:
                        break
                converged = time.monotonic() - started
                rows_out.append(
                    [
                        str(round_ + 1),
                        f"{converged:.2f}" if streak >= 50 else "**not within 30 s**",
                        str(old_answers),
                    ]
                )
            counted = _predict_total(base, 2)
    report.table(
        "Rolling a version out to 2 workers",
        f"One POST /admin/reload per round (CTR_POLL_INTERVAL_S=2), then requests each on a "
        f"fresh connection until 50 in a row name the new version. The bound is one poll "
        f"interval plus loading and warming. /metrics counted {counted:,.0f} /predict answers "
        f"for the {sent:,} requests sent.",
        ["round", "seconds until 50 fresh connections in a row see it", "old-version answers"],
        rows_out,
    )


def memory(report: Report, model_dir: Path, unique_keys: int, maxsize: int) -> None:
    spec = load_spec(model_dir)
    rows_out = []
    for cache in (maxsize, 0):
        env = {
            "CTR_MODEL_REPOSITORY": str(model_dir),
            "CTR_CACHE_MAXSIZE": str(cache),
            "CTR_CACHE_TTL_S": "3600",
        }
        with server(APP, env) as base, httpx.Client(timeout=60) as client:
            process = listening_process(base)
            sent = 0
            checkpoints = sorted({unique_keys // 4, unique_keys // 2, unique_keys})
            for checkpoint in checkpoints:
                while sent < checkpoint:
                    size = min(FLOOD_BATCH_ROWS, checkpoint - sent)
                    rows = unique_rows(spec, size, seed=1_000_000 + sent)
                    client.post(f"{base}/predict", json={"instances": rows}).raise_for_status()
                    sent += size
                entries = _metric(client.get(f"{base}/metrics").text, "ctr_cache_entries")
                rss = process.memory_info().rss / 2**20
                rows_out.append([f"{cache:,}", f"{sent:,}", f"{entries:,.0f}", f"{rss:,.0f}"])
    report.table(
        "Bounded memory under a flood of distinct rows",
        f"{unique_keys:,} distinct rows sent in batches of {FLOOD_BATCH_ROWS:,}; resident memory "
        f"of the server process (psutil) at each checkpoint, with a {maxsize:,}-entry cache and "
        "without a "
        "cache. Entries never exceed CTR_CACHE_MAXSIZE; growth once the cache is full is "
        "allocator slack, not cache entries.",
        ["CTR_CACHE_MAXSIZE", "distinct rows sent", "cache entries", "RSS MiB"],
        rows_out,
    )


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def shutdown(report: Report, model_dir: Path) -> None:
    started = time.perf_counter()
    outcome = sigterm_during_a_request(model_dir)
    answered = outcome.answer.startswith(b"HTTP/1.1 200") and b'"prediction"' in outcome.answer
    exited = outcome.exit_code in (0, -signal.SIGTERM)
    verdict = (
        "in-flight request answered 200, process exited on SIGTERM"
        if answered and exited
        else f"**failed**: answer {outcome.answer[:60]!r}, exit status {outcome.exit_code}"
    )
    report.table(
        "Graceful shutdown",
        "A request whose body is half sent when SIGTERM arrives; the rest is sent after.",
        ["outcome", "seconds"],
        [[verdict, f"{time.perf_counter() - started:.1f}"]],
    )


def security(report: Report) -> None:
    rows = []
    app_sources = "\n".join(p.read_text() for p in (ROOT / "app").rglob("*.py"))
    for banned in ("pickle", "torch.load", "joblib", "eval(", "exec("):
        rows.append([f"`{banned}` in app/", "absent" if banned not in app_sources else "**found**"])
    rows.append(
        [
            "reload token comparison",
            "secrets.compare_digest"
            if "compare_digest" in app_sources
            else "**not constant-time**",
        ]
    )
    audit = subprocess.run(
        [sys.executable, "-m", "pip_audit", "--progress-spinner", "off", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if audit.stdout.strip().startswith("{"):
        found = json.loads(audit.stdout)
        packages = found.get("dependencies", [])
        vulnerable = [p for p in packages if p.get("vulns")]
        ids = ", ".join(
            f"{p['name']} {p['version']}: " + " ".join(v["id"] for v in p["vulns"])
            for p in vulnerable
        )
        rows.append(
            [
                "pip-audit over the installed environment",
                f"{len(packages)} packages, {len(vulnerable)} with known vulnerabilities"
                + (f" ({ids})" if ids else ""),
            ]
        )
    else:
        reason = (audit.stderr.strip().splitlines() or ["no output"])[-1][:160]
        rows.append(["pip-audit over the installed environment", f"could not run: {reason}"])
    report.table(
        "Security checks",
        "Static checks of the service code and a dependency audit.",
        ["check", "result"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models/default")
    parser.add_argument("--examples", type=int, default=300, help="fuzz cases per operation")
    parser.add_argument("--duration", type=int, default=20, help="seconds of reload under load")
    parser.add_argument("--unique-keys", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/RELIABILITY.md")
    args = parser.parse_args()
    args.model_dir = args.model_dir.resolve()  # servers under test start in an empty directory
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "httpx2", "app"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    report = Report()
    fuzzing(report, args.model_dir, args.examples)
    encoder_fuzzing(report, args.examples * 10)
    v2_fuzzing(report, args.model_dir, args.examples * 3)
    hostile_bodies(report, args.model_dir, args.examples * 2)
    limits(report, args.model_dir)
    faults(report, args.model_dir)
    reload_under_load(report, args.model_dir, args.duration)
    fleet_rollout(report, args.model_dir, rounds=5)
    memory(report, args.model_dir, args.unique_keys, maxsize=100_000)
    shutdown(report, args.model_dir)
    security(report)
    head = [
        "# ctrserve reliability",
        "",
        f"Generated by `make reliability` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. "
        f"Machine: {machine()}. Model: `{relative(args.model_dir)}`. The same checks run, "
        "smaller, in the test suite (tests/app/test_fuzz.py, test_faults.py, test_limits.py, "
        "test_hardening.py, test_fleet.py, test_repository.py, test_v2_fuzz.py, "
        "test_hostile_bodies.py, "
        "tests/features/test_encoder_fuzz.py).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(head) + "\n" + "\n".join(report.sections))
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
