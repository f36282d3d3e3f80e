"""The shadow thread at shutdown: every job is told once, scored or not, so each shadowed
request is still logged; nothing waits on a shadow for longer than the bound."""

import asyncio
from pathlib import Path

import numpy as np
import pytest

from app.cache import ScoreCache
from app.metrics import Tally
from app.model.scorer import Scorer
from app.repository.store import resolve_model_dir
from app.scoring.shadow import ShadowJob, ShadowScorer
from support.faults import slow_version

pytest.importorskip("onnx")  # the slow version is built with the onnx package


def test_close_tells_every_job_once_even_when_a_call_outlives_it(
    model_dir: Path, tmp_path: Path
) -> None:
    primary = Scorer.load(resolve_model_dir(model_dir))
    # about 2 GFLOP a matmul: a call of 400 runs well past close()'s 5 s wait
    slow = Scorer.load(slow_version(model_dir, tmp_path / "slow", matmuls=400))
    rows = np.ones((1, len(primary.manifest.features.fields)), dtype=np.int64)
    told: list[tuple[int, bool]] = []

    async def shadow_then_close() -> None:
        shadows = ShadowScorer(Tally(), max_queued_rows=100)
        loop = asyncio.get_running_loop()
        for i in range(3):
            job = ShadowJob(
                "m", ScoreCache(0, 60), primary, slow, rows, primary.score_indices(rows),
                done=lambda scores, i=i: told.append((i, scores is not None)), loop=loop,
            )  # fmt: skip
            shadows.offer(job)
            await asyncio.sleep(0.05)  # the thread takes the first job into its long call
        await asyncio.to_thread(shadows.close)
        await asyncio.sleep(0)  # the callbacks scheduled by close() run

    asyncio.run(shadow_then_close())
    assert sorted(i for i, _ in told) == [0, 1, 2]  # each told exactly once, scored or not
