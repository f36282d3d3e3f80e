"""The service must import and serve with torch unavailable."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts processes: servers or the training CLI

ROOT = Path(__file__).resolve().parents[2]


def test_app_serves_without_torch(model_dir: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        from fastapi.testclient import TestClient
        from app.core.config import Settings
        from app.main import create_app
        from app.repository.store import resolve_model_dir
        from app.model.scorer import Scorer

        with TestClient(create_app(Settings(model_dir={str(model_dir)!r}))) as client:
            response = client.post("/predict", json={{"features": {{"c0": "c0_1"}}}})
            assert response.status_code == 200, response.text
        assert Scorer.load(resolve_model_dir(Path({str(model_dir)!r}))).smoke_test() > 0
        assert not any(name.startswith("training") for name in sys.modules)
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
