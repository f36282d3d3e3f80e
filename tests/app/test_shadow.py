"""The shadow thread at shutdown: every job is told once, scored or not, so each shadowed
request is still logged; nothing waits on a shadow for longer than the bound, and the call
that outlived it is stopped, so the process exits cleanly."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.faults import slow_version

pytest.importorskip("onnx")  # the slow version is built with the onnx package

# Run in a process of its own: one left with a thread inside onnxruntime aborts at exit.
_SHADOW_THEN_CLOSE = """
import asyncio, json, sys, threading
from pathlib import Path
import numpy as np
from app.cache import ScoreCache
from app.metrics import Tally
from app.model.scorer import Scorer
from app.repository.store import resolve_model_dir
from app.scoring.shadow import ShadowJob, ShadowScorer

primary = Scorer.load(resolve_model_dir(Path(sys.argv[1])))
slow = Scorer.load(Path(sys.argv[2]))
rows = np.ones((1, len(primary.manifest.features.fields)), dtype=np.int64)
told = []

async def shadow_then_close():
    shadows = ShadowScorer(Tally(), max_queued_rows=100)
    loop = asyncio.get_running_loop()
    for i in range(3):
        job = ShadowJob(
            "m", ScoreCache(0, 60), primary, slow, rows, primary.score_indices(rows),
            done=lambda scores, i=i: told.append((i, scores is not None)), loop=loop,
        )
        shadows.offer(job)
        await asyncio.sleep(0.05)  # the thread takes the first job into its long call
    await asyncio.to_thread(shadows.close)
    await asyncio.sleep(0)  # the callbacks scheduled by close() run

asyncio.run(shadow_then_close())
left = [t.name for t in threading.enumerate() if t.name == "ctr-shadow"]
print(json.dumps({"told": told, "left": left}))
"""


def test_close_tells_every_job_once_and_stops_a_call_that_outlives_it(
    model_dir: Path, tmp_path: Path
) -> None:
    # about 2 GFLOP a matmul: a call of 400 runs well past close()'s 5 s wait
    slow = slow_version(model_dir, tmp_path / "slow", matmuls=400)
    done = subprocess.run(
        [sys.executable, "-c", _SHADOW_THEN_CLOSE, str(model_dir), str(slow)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(i for i, _ in outcome["told"]) == [0, 1, 2]  # each told once, scored or not
    assert outcome["left"] == []  # its call was stopped: no thread is left in onnxruntime
