"""All service settings, from ``CTR_*`` environment variables (or a ``.env`` file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service settings. Every field is ``CTR_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="CTR_", env_file=".env", extra="ignore", protected_namespaces=()
    )

    model_dir: Path = Field(default=Path("models/default"), description="exported model directory")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, description="uvicorn worker processes")
    cache_maxsize: int = Field(default=100_000, ge=0, description="cached scores; 0 disables")
    cache_ttl_s: float = Field(default=300.0, gt=0)
    ort_intra_op_threads: int = Field(default=1, ge=1, description="onnxruntime threads per call")
    max_batch_size: int = Field(default=10_000, ge=1, description="rows per /predict request")
    inline_max_rows: int = Field(
        default=256,
        ge=0,
        description="requests with at most this many rows are scored on the event loop; "
        "larger ones in the thread pool (0 = always the thread pool)",
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="request body limit (413 above it)"
    )
    max_value_chars: int = Field(
        default=256, ge=1, description="longest string value a request may carry (422 above)"
    )
    request_timeout_s: float = Field(
        default=10.0, gt=0, description="a request still unanswered after this gets a 504"
    )
    reload_token: SecretStr | None = Field(
        default=None, description="bearer token for POST /admin/reload; unset disables reload"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment, read once per process (tests pass their own)."""
    return Settings()
