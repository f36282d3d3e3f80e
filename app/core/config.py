"""All service settings, from ``CTR_*`` environment variables (or a ``.env`` file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service settings. Every field is ``CTR_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="CTR_",
        env_file=".env",
        extra="ignore",
        protected_namespaces=(),
        populate_by_name=True,
    )

    model_dir: Path = Field(
        default=Path("models/default"),
        validation_alias=AliasChoices("CTR_MODEL_REPOSITORY", "CTR_MODEL_DIR"),
        description="CTR_MODEL_REPOSITORY (or CTR_MODEL_DIR): a repository of models "
        "(<name>/ folders, each with <version>/ folders and CURRENT), one model's folder, or "
        "a flat exported model directory",
    )
    model_name: str | None = Field(
        default=None,
        min_length=1,
        description="the name of a one-model directory's model in every protocol (unset: "
        "the directory's name)",
    )
    default_model: str | None = Field(
        default=None,
        min_length=1,
        description="the model POST /predict and GET /model answer (unset: the only one, "
        "else the one named 'default', else the first by name)",
    )
    model_version: str | None = Field(
        default=None,
        description="serve this version of the default model and ignore its CURRENT "
        "(unset: follow CURRENT)",
    )
    poll_interval_s: float = Field(
        default=2.0, gt=0, description="seconds between checks of the repository's CURRENT"
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, description="uvicorn worker processes")
    grpc_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="port of the gRPC inference service (KServe V2); unset: no gRPC",
    )
    cache_maxsize: int = Field(
        default=100_000,
        ge=0,
        description="cached scores per worker, shared by the models (policy.yaml's "
        "cache_entries, else an even share each); 0 disables",
    )
    cache_ttl_s: float = Field(default=300.0, gt=0, description="seconds a cached score lives")
    ort_intra_op_threads: int = Field(default=1, ge=1, description="onnxruntime threads per call")
    scoring_threads: int = Field(
        default=0,
        ge=0,
        description="threads that run onnxruntime calls (app/scoring/batcher.py); 0 = the CPUs "
        "of this process's affinity, capped by its cgroup CPU quota",
    )
    batch_max_rows: int = Field(
        default=64,
        ge=1,
        description="a free scoring thread takes queued cache misses up to this many rows "
        "into one onnxruntime call",
    )
    max_queued_rows: int = Field(
        default=4096,
        ge=1,
        description="rows waiting for a scoring thread at most; past it a request is refused "
        "at once with 503 and Retry-After",
    )
    shadow_queue_rows: int = Field(
        default=4096,
        ge=1,
        description="rows waiting for a shadow thread at most; past it a shadowed request "
        'is not scored again (ctr_shadow_requests_total{outcome="dropped"})',
    )
    max_inflight_requests: int = Field(
        default=128,
        ge=1,
        description="scoring requests a worker answers at once; past it a request is refused "
        "at once with 503 and Retry-After (gRPC: RESOURCE_EXHAUSTED)",
    )
    # uvloop accepts one connection a loop turn: under overload a burst of new connections
    # waited seconds; p99 at fixed rates differed within noise (docs/OPEN_LOOP_SETTINGS.md).
    event_loop: Literal["asyncio", "uvloop"] = Field(
        default="asyncio",
        description="each worker's event loop: asyncio accepts every waiting connection at "
        "once, uvloop one per turn of its loop",
    )
    # Stays while it lowers p99 at a fixed rate: docs/OPEN_LOOP_SETTINGS.md.
    gc_freeze: bool = Field(
        default=True,
        description="keep everything alive at start-up (libraries, the model) out of the "
        "cyclic garbage collector's scans (gc.freeze)",
    )
    max_batch_size: int = Field(default=10_000, ge=1, description="rows per /predict request")
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
    publish_root: Path | None = Field(
        default=None,
        description="directory under which POST /admin/reload may take a model to copy into "
        "the repository ({'model_dir': ...}); unset: such reloads are refused",
    )
    prediction_log: str | None = Field(
        default=None,
        min_length=1,
        description="directory (or pyarrow.fs URI, e.g. s3://bucket/log) of the prediction "
        "log: one Parquet record per scored row (app/prediction_log/log.py); unset: off",
    )
    prediction_log_sample: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="share of requests (or rows, keyed by a feature) logged",
    )
    prediction_log_key: str | None = Field(
        default=None,
        pattern=r"^(header|feature):.+$",
        description="sticky sampling: header:<name> (e.g. header:X-User-Id) or feature:<field>; "
        "the same key is always logged or never, in every worker; unset: drawn per request",
    )
    prediction_log_queue_rows: int = Field(
        default=100_000,
        ge=1,
        description="records waiting for the log's writer at most; past it they are dropped "
        "and counted (ctr_prediction_log_dropped_total), never waited for",
    )
    prediction_log_roll_rows: int = Field(
        default=1_000_000, ge=1, description="a log file is closed and published at this many rows"
    )
    prediction_log_roll_bytes: int = Field(
        default=128 << 20, ge=1024, description="... or at this size"
    )
    prediction_log_roll_s: float = Field(default=300.0, gt=0, description="... or at this age")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False
    # Off by default: the service's own metrics are Prometheus' (/metrics), and with it on
    # every request asks OpenTelemetry for a provider first: docs/THRESHOLDS.md#otel
    otel: bool = Field(
        default=False,
        description="FastAPI's native OpenTelemetry: request spans, metrics and logs through "
        "the global providers (or OTLP exporters from the OTEL_* variables with "
        "FASTAPI_OTEL_AUTO_CONFIGURE=true)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        """Cross-field checks, so a contradictory configuration fails at start-up."""
        if self.max_queued_rows < self.batch_max_rows:
            raise ValueError(
                f"max_queued_rows ({self.max_queued_rows}) must be at least batch_max_rows "
                f"({self.batch_max_rows})"
            )
        return self

    def warmup_batch_sizes(self) -> tuple[int, ...]:
        """Batch sizes a new model version is scored at before it takes traffic."""
        largest = min(self.max_batch_size, 1024)
        return tuple(sorted({1, min(8, largest), min(64, largest), largest}))


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment, read once per process (tests pass their own)."""
    return Settings()
