"""The prediction log: every scored row of every protocol becomes one record, with its
request id, values and score; a full queue drops and counts; sampling is sticky by a key;
a worker killed with SIGKILL loses only what it had not handed to its writer process, a
writer killed loses its open file (counted) and another takes over, and no reader ever sees
a partial file."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.features.encoder import FeatureEncoder
from app.features.spec import FeatureSpec
from app.main import create_app
from app.model.scorer import Scorer
from app.prediction_log import log as prediction_log
from app.prediction_log.log import PredictionLog
from app.prediction_log.writer import LOG_COLUMNS, LogFiles, to_batch
from app.repository.store import resolve_model_dir
from app.request import RequestContext, StickyKey
from support.payloads import triton_inputs
from support.servers import free_port, listening_process, metric_values
from support.servers import server as start_server

grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")
_TENSORS = (("c0", "BYTES"), ("n0", "FP32"))


def _records(directory: Path) -> pa.Table:
    """Every published record, read as a user's reader would (hidden files skipped)."""
    return pads.dataset(directory, format="parquet").to_table()


@pytest.fixture
def served(repository: Path, tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """(HTTP base URL, gRPC address, log directory) of a real `python -m app` logging all."""
    grpc_port = free_port()
    log = tmp_path / "log"
    env = {
        "CTR_MODEL_REPOSITORY": str(repository),
        "CTR_GRPC_PORT": str(grpc_port),
        "CTR_PREDICTION_LOG": str(log),
    }
    with start_server([sys.executable, "-m", "app"], env) as base:
        yield base, f"127.0.0.1:{grpc_port}", log


@pytest.mark.slow
def test_every_protocol_logs_every_row_with_its_id_values_and_score(
    served: tuple[str, str, Path],
) -> None:
    base, address, log = served
    answers: dict[str, list[float]] = {}
    one = httpx.post(
        f"{base}/predict",
        json={"features": {"c0": "c0_1", "n0": 2.5, "c1": 7}},
        headers={"X-Request-ID": "single-1"},
    )
    assert one.headers["x-request-id"] == "single-1"
    answers["single-1"] = [one.json()["prediction"]]
    rows = [{"c0": f"c0_{i}", "n0": i / 4} for i in range(3)]
    batch = httpx.post(f"{base}/predict", json={"instances": rows})
    generated = batch.headers["x-request-id"]  # none sent: one is made and returned
    answers[generated] = batch.json()["predictions"]
    v2 = httpclient.InferenceServerClient(base.removeprefix("http://"))
    result = v2.infer(
        "repository", triton_inputs(httpclient, rows, _TENSORS), headers={"X-Request-ID": "v2-1"}
    )
    answers["v2-1"] = result.as_numpy("score").tolist()
    grpc = grpcclient.InferenceServerClient(address)
    result = grpc.infer(
        "repository", triton_inputs(grpcclient, rows, _TENSORS), headers={"x-request-id": "g-1"}
    )
    answers["g-1"] = result.as_numpy("score").tolist()
    listening_process(base).send_signal(signal.SIGTERM)  # a clean stop publishes the open file
    deadline = time.monotonic() + 20
    while not list(log.rglob("*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.1)

    table = _records(log).sort_by([("request_id", "ascending"), ("row", "ascending")])
    assert table.column_names[: len(LOG_COLUMNS)] == list(LOG_COLUMNS)
    assert table.num_rows == sum(len(scores) for scores in answers.values())
    records = table.to_pylist()
    for request_id, scores in answers.items():
        mine = [r for r in records if r["request_id"] == request_id]
        assert [r["row"] for r in mine] == list(range(len(scores)))
        assert [r["score"] for r in mine] == pytest.approx(scores, rel=1e-6)
        assert {r["model"] for r in mine} == {"repository"}
    single = next(r for r in records if r["request_id"] == "single-1")
    # values as the model looked them up: the id 7 sent as a number is the token "7"
    assert (single["c0"], single["c1"], single["n0"], single["n1"]) == ("c0_1", "7", 2.5, None)
    for request_id in (generated, "v2-1", "g-1"):
        mine = [r for r in records if r["request_id"] == request_id]
        assert [r["c0"] for r in mine] == ["c0_0", "c0_1", "c0_2"]
        assert [r["n0"] for r in mine] == [0.0, 0.25, 0.5]
    # the same rows a third time (a row is cached on its second sight): from the score cache
    cached = {r["request_id"]: r["cached"] for r in records}
    assert (cached[generated], cached["g-1"]) == (False, True)


def test_sampling_by_a_header_is_sticky_per_user(settings: Settings, tmp_path: Path) -> None:
    log = tmp_path / "log"
    settings = settings.model_copy(
        update={
            "prediction_log": str(log),
            "prediction_log_sample": 0.3,
            "prediction_log_key": "header:X-User-Id",
        }
    )
    users = [f"user-{i}" for i in range(200)]
    with TestClient(create_app(settings)) as client:
        for round_ in range(3):
            for user in users:
                features = {"c0": f"c0_{round_}", "n0": 1.0}
                response = client.post(
                    "/predict", json={"features": features}, headers={"X-User-Id": user}
                )
                assert response.status_code == 200
    logged = _records(log).column("request_id").to_pylist()
    assert len(logged) % 3 == 0  # a user is logged in every round or in none
    expected = [u for u in users if _hash(u) < 0.3 * 2**64]
    assert len(logged) == 3 * len(expected)
    assert 40 <= len(expected) <= 80  # the share drawn is the share asked for


def test_sampling_by_a_feature_is_sticky_per_value(settings: Settings, tmp_path: Path) -> None:
    log = tmp_path / "log"
    settings = settings.model_copy(
        update={
            "prediction_log": str(log),
            "prediction_log_sample": 0.5,
            "prediction_log_key": "feature:c0",
        }
    )
    values = [f"c0_{i}" for i in range(100)]
    with TestClient(create_app(settings)) as client:
        rows = [{"c0": value, "n0": 1.0} for value in values]
        assert client.post("/predict", json={"instances": rows}).status_code == 200
    logged = sorted(_records(log).column("c0").to_pylist())
    assert logged == sorted(v for v in values if _hash(v) < 0.5 * 2**64)


def _hash(key: str) -> int:
    """The documented sticky hash: BLAKE2b of the key, 64 bits, big-endian."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest())


def _scored(scorer: Scorer, rows: int) -> tuple[np.ndarray, np.ndarray]:
    return np.linspace(0, 1, rows, dtype=np.float32), np.zeros(rows, dtype=bool)


def test_every_record_taken_is_written_once_in_order(repository: Path, tmp_path: Path) -> None:
    """Single rows and batches across many frames, two models and a version of other fields
    interleaved: N rows in, the same N records out, each with its values, in arrival order
    in a file of its model and fields."""
    scorer = Scorer.load(resolve_model_dir(repository))
    narrow = FeatureEncoder(FeatureSpec(fields=scorer.encoder.spec.fields[:3]))
    written: list[tuple[int, int]] = []
    log = PredictionLog(str(tmp_path / "log"), on_written=lambda r, f: written.append((r, f)))
    expected: dict[tuple[str, str], list[tuple[str, str, int]]] = defaultdict(list)
    for i in range(1_500):
        model = "cvr" if i % 3 == 0 else "ctr"  # an ad server asks both, turn by turn
        encoder = narrow if model == "ctr" and 700 <= i < 800 and i % 2 else scorer.encoder
        into = expected[model, encoder.names[-1]]
        token = prediction_log.CURRENT_REQUEST.set(RequestContext(f"r{i}"))
        if i % 100 == 99:  # a batch of 7 rows
            values = [f"c0_{i}_{j}" for j in range(7)]
            scores, cached = _scored(scorer, 7)
            log.add(model, "v", scores, cached, encoder, lambda e, v=values: {"c0": v})
            into += [(f"r{i}", v, j) for j, v in enumerate(values)]
        else:
            scores, cached = _scored(scorer, 1)
            log.add(model, "v", scores, cached, encoder, {"c0": f"c0_{i}", "n0": 1.0})
            into.append((f"r{i}", f"c0_{i}", 0))
        prediction_log.CURRENT_REQUEST.reset(token)
    log.close()
    files = sorted((tmp_path / "log").rglob("*.parquet"))
    assert len(files) == len(expected) == 3  # ctr's two sets of fields, cvr's one
    for path in files:
        table = pq.read_table(path)
        (model,) = set(table.column("model").to_pylist())
        assert path.parent.name == model  # a folder per model
        records = table.select(["request_id", "c0", "row"]).to_pylist()
        assert [tuple(r.values()) for r in records] == expected[model, table.column_names[-1]]
    assert sum(rows for rows, _ in written) == sum(len(rows) for rows in expected.values())
    assert log.dropped_rows == 0


def _writers(process: psutil.Process) -> list[psutil.Process]:
    """The prediction log writer processes that ``process`` started."""
    return [p for p in process.children() if "app.prediction_log.writer" in p.cmdline()]


def test_a_full_queue_drops_and_counts_and_never_waits(repository: Path, tmp_path: Path) -> None:
    scorer = Scorer.load(resolve_model_dir(repository))
    dropped: list[int] = []
    log = PredictionLog(str(tmp_path / "log"), max_queued_rows=10, on_dropped=dropped.append)
    (writer,) = _writers(psutil.Process())
    writer.suspend()  # a writer stuck on a slow disk
    scores, cached = _scored(scorer, 4)

    def add() -> None:
        log.add("m", "v", scores, cached, scorer.encoder, lambda e: {"c0": ["c0_1"] * 4})

    async def requests() -> float:
        add()
        await asyncio.sleep(prediction_log.HAND_OVER_S + 0.3)  # sent: the writer is stuck
        started = time.monotonic()
        for _ in range(5):  # 20 rows, 4 waiting: room for one more request of 4
            add()
        return time.monotonic() - started

    assert asyncio.run(requests()) < 0.5
    assert dropped == [4, 4, 4, 4]
    assert log.dropped_rows == 16
    writer.resume()
    log.close()
    assert _records(tmp_path / "log").num_rows == 8  # nothing the queue took is lost


@pytest.mark.slow
def test_a_worker_killed_loses_only_what_it_had_not_handed_over(
    repository: Path, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    env = {
        "CTR_MODEL_REPOSITORY": str(repository),
        "CTR_PREDICTION_LOG": str(log),
        "CTR_PREDICTION_LOG_ROLL_ROWS": "50",
    }
    with start_server([sys.executable, "-m", "app"], env) as base, httpx.Client() as client:
        worker = listening_process(base)
        (writer,) = _writers(worker)
        _send(client, base, 60, 0)
        deadline = time.monotonic() + 10
        while metric_values(base, "ctr_prediction_log_records_total")[0] < 60:
            assert time.monotonic() < deadline, "the first file was never published"
            time.sleep(0.1)
        _send(client, base, 30, 60)
        time.sleep(2 * prediction_log.HAND_OVER_S)  # handed over to the writer: unpublished
        worker.send_signal(signal.SIGKILL)
        _send(client, base, 5, 90, expect_failure=True)  # never answered: never logged
        writer.wait(10)  # the worker's end is the end of its input: it publishes and exits
    published = sorted(log.rglob("*.parquet"))
    assert len(published) == 2
    assert sorted(pq.read_table(p).num_rows for p in published) == [30, 60]  # whole files
    assert _records(log).num_rows == 90
    assert not list(log.rglob(".*"))  # nothing left open


@pytest.mark.slow
def test_a_writer_killed_loses_its_open_file_counted_and_another_takes_over(
    repository: Path, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    env = {"CTR_MODEL_REPOSITORY": str(repository), "CTR_PREDICTION_LOG": str(log)}
    with start_server([sys.executable, "-m", "app"], env) as base, httpx.Client() as client:
        worker = listening_process(base)
        (writer,) = _writers(worker)
        _send(client, base, 30, 0)
        time.sleep(2 * prediction_log.HAND_OVER_S)  # taken by the writer, in its open file
        writer.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while metric_values(base, "ctr_prediction_log_dropped_total")[0] < 30:
            assert time.monotonic() < deadline, "the lost records were never counted"
            time.sleep(0.1)
        _send(client, base, 20, 30)  # the next frame starts another writer
        time.sleep(2 * prediction_log.HAND_OVER_S)
        (replacement,) = _writers(worker)
        assert replacement.pid != writer.pid
        assert metric_values(base, "ctr_prediction_log_dropped_total")[0] == 30
        worker.send_signal(signal.SIGTERM)  # a clean stop publishes the open file
        replacement.wait(20)
    assert not list(log.rglob("*.parquet"))[1:]  # one file: the new writer's
    assert sorted(_records(log).column("c0").to_pylist()) == sorted(
        f"c0_{i}" for i in range(30, 50)
    )


def _send(
    client: httpx.Client, base: str, count: int, first: int, expect_failure: bool = False
) -> None:
    for i in range(first, first + count):
        body = {"features": {"c0": f"c0_{i}", "n0": 1.0}}
        try:
            client.post(f"{base}/predict", json=body, timeout=2).raise_for_status()
        except httpx.TransportError:
            assert expect_failure
        else:
            assert not expect_failure


def test_a_remote_filesystem_gets_whole_files(repository: Path) -> None:
    scorer = Scorer.load(resolve_model_dir(repository))
    reports: list[tuple[str, int]] = []
    files = LogFiles(
        "mock:///bucket/log",
        roll_rows=1_000,
        roll_bytes=1 << 20,
        roll_s=60,
        report=lambda kind, rows: reports.append((kind, rows)),
    )
    scores, cached = _scored(scorer, 3)
    rows = prediction_log._Rows("m", scorer.encoder)
    values = {"c0": ["a", "b", None]}
    rows.add(prediction_log._Entry(0.0, "r", "m", "v1", scores, cached, scorer.encoder,
                                   lambda e: values, None, None))  # fmt: skip
    files.add("m", to_batch(rows.frame()))
    assert files.filesystem.get_file_info(pa.fs.FileSelector("bucket/log/m")) == []  # spooled
    files.publish()
    (info,) = files.filesystem.get_file_info(pa.fs.FileSelector("bucket/log/m"))
    assert info.base_name.endswith(".parquet")
    table = pq.read_table(info.path, filesystem=files.filesystem)
    assert table.column("c0").to_pylist() == ["a", "b", None]
    assert table.column("score").to_pylist() == pytest.approx(scores.tolist())
    assert reports == [("published", 3)]


@pytest.mark.parametrize("text", ["cookie:x", "header:", "feature", ""])
def test_a_sampling_key_is_a_header_or_a_feature(text: str) -> None:
    with pytest.raises(ValueError, match="header:<name> or feature:<field>"):
        StickyKey.parse(text)


def test_an_unwritable_log_is_refused_at_start_up(settings: Settings, tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    settings = settings.model_copy(update={"prediction_log": str(blocked / "log")})
    with (
        pytest.raises(prediction_log.PredictionLogError, match="prediction log"),
        TestClient(create_app(settings)),
    ):
        pass


def test_every_answer_carries_a_request_id(settings: Settings) -> None:
    """The client's id comes back; one that is not an id is replaced; none gets a new one."""
    body = {"features": {"c0": "c0_1"}}
    with TestClient(create_app(settings)) as client:
        kept = client.post("/predict", json=body, headers={"X-Request-ID": "abc-1"})
        assert kept.headers["x-request-id"] == "abc-1"
        for sent in ("x" * 129, "tab\there"):
            replaced = client.post("/predict", json=body, headers={"X-Request-ID": sent})
            assert replaced.status_code == 200
            assert len(replaced.headers["x-request-id"]) == 32
        refused = client.post("/predict", json={"features": {"nope": 1}})
        assert refused.status_code == 422  # errors carry one too: the id to report
        assert len(refused.headers["x-request-id"]) == 32
        assert client.get("/healthz").headers["x-request-id"]
