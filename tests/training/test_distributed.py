"""Training as a torchrun job: the same CLI on 2 gloo processes, as a user launches it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from app.features.spec import UNSEEN_INDEX  # noqa: E402
from app.repository.store import ModelRepository  # noqa: E402
from support.servers import ROOT  # noqa: E402
from support.training_files import training_cli  # noqa: E402
from training.distributed import Cluster, block_rows_for, deal_blocks, resolve_device  # noqa: E402
from training.layers import field_offsets  # noqa: E402
from training.models import ModelConfig, build_model  # noqa: E402
from training.optim import SparseOptimizer  # noqa: E402

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
JOB_TIMEOUT_S = 240


def torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TORCHRUN, str(processes), "-m", "training", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dist") / "logs.csv"
    assert (
        training_cli("synth", "--rows", "20000", "--seed", "5", "--out", str(path)).returncode == 0
    )
    return path


def _blocks_read(stderr: str, rank: int) -> set[int]:
    found = re.search(
        rf"rank {rank}, epoch 1: reads \d+ of the \d+ train blocks \(([\d, .]+)\)", stderr
    )
    assert found, stderr[-2000:]
    return {int(b) for b in found.group(1).replace(", ...", "").split(", ")}


@pytest.mark.slow
def test_two_processes_train_the_model_one_process_trains(logs: Path, tmp_path: Path) -> None:
    job = ["train", "--data", str(logs), "--model", "lr", "--epochs", "8", "--no-progress"]
    alone = training_cli(*job, "--out", str(tmp_path / "one"))
    shared = torchrun(*job, "--out", str(tmp_path / "two"))
    assert alone.returncode == 0, alone.stderr[-2000:]
    # torchrun's own report of a failed rank is ~2,000 characters: keep what the ranks said.
    assert shared.returncode == 0, shared.stderr[-8000:]
    one, two = json.loads(alone.stdout), json.loads(shared.stdout)  # rank 0 prints alone
    assert (one["processes"], two["processes"]) == (1, 2)
    assert abs(one["test"]["auc"] - two["test"]["auc"]) < 0.005
    # Each rank read its own blocks, and only rank 0 wrote the model: one version.
    assert not _blocks_read(shared.stderr, 0) & _blocks_read(shared.stderr, 1)
    assert len(ModelRepository(tmp_path / "two").versions()) == 1


@pytest.mark.slow
def test_two_nodes_meet_at_a_rendezvous_and_each_prepares_its_own_disk(
    logs: Path, tmp_path: Path
) -> None:
    """Two torchrun launchers, as on two machines (one process each, a c10d rendezvous on
    127.0.0.1), each with its own shard cache, as machines without a shared volume have."""
    port = _free_port()
    launch = [
        *("-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"),
        *("--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}"),
        *("--rdzv-id", "two-nodes", "-m", "training", "train", "--data", str(logs)),
        *("--model", "ffm", "--epochs", "2", "--no-progress", "--out", str(tmp_path / "models")),
    ]
    launchers = [
        subprocess.Popen(
            [sys.executable, *launch, "--cache-dir", str(tmp_path / f"disk{node}")],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in range(2)
    ]
    outputs = []
    for launcher in launchers:
        try:
            outputs.append(launcher.communicate(timeout=JOB_TIMEOUT_S))
        finally:
            if launcher.poll() is None:
                launcher.terminate()
                launcher.communicate(timeout=60)
    assert [launcher.returncode for launcher in launchers] == [0, 0], outputs
    summaries = [json.loads(out) for out, _ in outputs if out.strip()]
    assert len(summaries) == 1  # rank 0 alone reports ...
    assert summaries[0]["processes"] == 2
    assert len(ModelRepository(tmp_path / "models").versions()) == 1  # ... and exports
    for node in range(2):  # each machine built the same shards on its own disk
        assert len(list((tmp_path / f"disk{node}").glob("*/meta.json"))) == 1


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_a_killed_rank_ends_the_whole_job_never_a_hang(logs: Path, tmp_path: Path) -> None:
    with subprocess.Popen(
        [*TORCHRUN, "2", "-m", "training", "train", "--data", str(logs), "--model", "nffm",
         "--epochs", "200", "--patience", "200", "--no-progress", "--out", str(tmp_path / "m"),
         "--collective-timeout", "60"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    ) as job:  # fmt: skip
        lines: list[str] = []
        try:
            reader = threading.Thread(target=lambda: lines.extend(iter(job.stderr.readline, "")))  # type: ignore[union-attr]
            reader.start()
            deadline = time.monotonic() + JOB_TIMEOUT_S
            pid = None
            while time.monotonic() < deadline and job.poll() is None:
                text = "".join(lines)
                started = re.search(r"rank 1 of 2 \(local rank 1, pid (\d+)\)", text)
                if started and "rank 1, epoch 2: reads" in text:
                    pid = int(started.group(1))
                    break
                time.sleep(0.2)
            assert pid is not None, _failure("".join(lines))
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)  # a rank this test started, by its PID
            job.wait(timeout=120)
            reader.join(timeout=10)
        finally:
            if job.poll() is None:  # the test failed before the job ended: end it
                job.terminate()
                job.wait(timeout=60)
    assert job.returncode != 0
    assert time.monotonic() - killed_at < 60
    report = "".join(lines)
    assert "local_rank: 1" in report, report[-2000:]
    assert "Signal 9" in report, report[-2000:]
    assert not (tmp_path / "m" / "CURRENT").exists()


@pytest.mark.slow
def test_bad_data_ends_the_job_with_that_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("label,site\n0,a\n1,b,c\n" + "0,d\n" * 50)
    started = time.monotonic()
    result = torchrun("train", "--data", str(bad), "--out", str(tmp_path / "m"), "--no-progress")
    assert result.returncode != 0
    assert "error: " in result.stderr
    assert "line 3: expected 2 columns" in result.stderr
    assert time.monotonic() - started < JOB_TIMEOUT_S


def _one_sided_step(rank: int, port: int, out: str) -> None:
    """One DDP step where rank 1's whole batch is unseen values (pytorch issue 87497:
    a rank whose sparse gradient has no rows broke gloo's sparse all-reduce)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    field_dims = [6, 5, 7]
    torch.manual_seed(0)
    model = build_model(field_dims, ModelConfig(name="ffm", embed_dim=2))
    wrapped = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = SparseOptimizer(model, field_dims, 0.1, 1e-3, "adagrad")
    values = [[2, 3, 4], [5, 2, 6]] if rank == 0 else [[UNSEEN_INDEX] * 3] * 2
    batch = torch.tensor(values)
    before = model.field_aware.embedding.weight.detach().clone()
    optimizer.zero_grad()
    wrapped(batch).sum().backward()
    optimizer.step()
    after = model.field_aware.embedding.weight.detach()
    unseen = (field_offsets(field_dims) + UNSEEN_INDEX).numpy()
    np.savez(
        f"{out}/rank{rank}.npz", after=after.numpy(), moved=(after != before).any(1).numpy(),
        unseen=unseen,
    )  # fmt: skip
    dist.destroy_process_group()


def test_a_rank_whose_batch_is_all_unseen_values_steps_with_the_others(tmp_path: Path) -> None:
    mp.spawn(_one_sided_step, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    first, second = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    np.testing.assert_array_equal(first["after"], second["after"])  # the ranks agree
    assert not first["moved"][first["unseen"]].any()  # unseen rows are never trained
    assert first["moved"].sum() == 6  # rank 0's six values moved


def test_blocks_are_dealt_disjoint_and_every_rank_takes_the_same_steps() -> None:
    ranks = [Cluster(rank=r, world_size=3) for r in range(3)]
    shares = [deal_blocks(100_000, 16_384, 256, c, seed=1, epoch=2) for c in ranks]
    dealt = np.concatenate([s.blocks for s in shares])
    assert sorted(dealt) == list(range(7))  # every block once
    assert len({s.steps for s in shares}) == 1
    assert all(-(-s.rows // 256) >= s.steps for s in shares)  # no rank runs out of batches
    again = deal_blocks(100_000, 16_384, 256, ranks[0], seed=1, epoch=3)
    assert list(again.blocks) != list(shares[0].blocks)  # a new deal each epoch
    assert block_rows_for(20_000, ranks[0], 16_384) == 1_666  # small splits: smaller blocks
    assert block_rows_for(20_000, Cluster(), 16_384) == 16_384


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_a_gpu_without_one_is_a_clear_error(
    logs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(Exception, match="no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize(
    ("module", "command"),
    [("training", "tune"), ("training", "prepare"), ("benchmarks.compare", "compare")],
)
def test_single_process_commands_say_so_under_torchrun(
    logs: Path, module: str, command: str
) -> None:
    args = ["--data", str(logs)] if command == "compare" else [command, "--data", str(logs)]
    if command == "tune":
        args += ["--out", str(logs.parent / "tuned")]
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "WORLD_SIZE": "2"},  # as torchrun sets it
    )
    assert result.returncode == 2
    assert f"error: {command} runs in one process" in result.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_same_job_trains_on_a_gpu(logs: Path, tmp_path: Path) -> None:
    job = ["train", "--data", str(logs), "--model", "nffm", "--epochs", "3", "--no-progress"]
    on_cpu = training_cli(*job, "--device", "cpu", "--out", str(tmp_path / "cpu"))
    on_gpu = training_cli(*job, "--device", "cuda", "--out", str(tmp_path / "gpu"))
    assert on_gpu.returncode == 0, on_gpu.stderr[-2000:]
    cpu, gpu = json.loads(on_cpu.stdout), json.loads(on_gpu.stdout)
    assert gpu["device"].startswith("cuda")
    assert abs(cpu["test"]["auc"] - gpu["test"]["auc"]) < 0.01


def _failure(stderr: str) -> str:
    """What a job's stderr says about a failure: every thread's stack that faulthandler
    printed when a rank died of a signal (torchrun's own summary names only the signal),
    else the end of it."""
    crash = stderr.find("Fatal Python error")
    return stderr[crash : crash + 8000] if crash >= 0 else stderr[-2000:]
