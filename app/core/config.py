"""All service settings, from ``CTR_*`` environment variables (or a ``.env`` file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_MIN_RESPONSE_CACHE_BYTES = 64 * 1024


class Settings(BaseSettings):
    """Service settings. Every field is ``CTR_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="CTR_", env_file=".env", extra="ignore", protected_namespaces=()
    )

    model_dir: Path = Field(
        default=Path("models/default"),
        description="model repository (models/<name>/ with <version>/ folders and CURRENT), "
        "or a flat exported model directory",
    )
    model_name: str | None = Field(
        default=None,
        min_length=1,
        description="the model's name in the inference protocol (unset: the repository's "
        "directory name)",
    )
    model_version: str | None = Field(
        default=None, description="serve this version and ignore CURRENT (unset: follow CURRENT)"
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
    cache_maxsize: int = Field(default=100_000, ge=0, description="cached scores; 0 disables")
    cache_ttl_s: float = Field(default=300.0, gt=0, description="seconds a cached score lives")
    response_cache_max_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=0,
        description="memory for exact repeats of single-row bodies and of batch rows' JSON "
        "text; 0 disables",
    )
    ort_intra_op_threads: int = Field(default=1, ge=1, description="onnxruntime threads per call")
    scoring_threads: int = Field(
        default=0,
        ge=0,
        description="threads that run onnxruntime calls off the event loop "
        "(app/scoring/threads.py); 0 = one per CPU this process may use",
    )
    # 0.1 ms, by A/B runs (wrk, 16 connections, 5 s rounds side by side, against CPython's
    # 5 ms): a scoring thread whose onnxruntime call is done needs the GIL to hand its scores
    # back, and while the event loop runs Python it waits for the switch interval, its core
    # idle. 100-row all-miss batches of the default model 1,453 against 1,142 req/s (1,343
    # against 1,190 in another run; 0.05-0.2 ms alike), of the DeepFM 575 against 509; the
    # NFFM's single rows 4,709 against 3,852 and its 90%-hit batches 992 against 795 (six
    # rounds); its all-miss batches, onnxruntime-bound, and the default model's single rows,
    # which use no thread, were unchanged.
    gil_switch_ms: float = Field(
        default=0.1,
        gt=0,
        description="how long a thread may keep the GIL while another waits for it "
        "(sys.setswitchinterval, set while the service runs); CPython's own is 5",
    )
    max_batch_size: int = Field(default=10_000, ge=1, description="rows per /predict request")
    inline_max_rows: int = Field(
        default=256,
        ge=0,
        description="batches of at most this many rows are encoded and looked up in the "
        "cache on the event loop; larger ones go to the thread pool whole (0 = always)",
    )
    # 0.2 ms, by A/B runs (wrk, 16 connections, 5 s rounds, the same run side by side):
    # 100 all-miss rows of the default model (~0.33 ms) in a thread served 1,126 req/s
    # against 990 inline; the 10 misses of a 90%-hit DeepFM batch (~0.13 ms) stay inline,
    # where they served 10% more than in a thread; those of the 39-field NFFM (~0.55 ms)
    # served 754 req/s in a thread against 604 inline.
    inline_max_ms: float = Field(
        default=0.2,
        gt=0,
        description="a batch's cache misses are scored on the event loop when the model "
        "scores them in this many milliseconds (timed at load), else in a scoring thread, "
        "where two calls use two cores",
    )
    # 64 for batches' misses too: 90%-hit batches of the production NFFM (~10 misses each)
    # served 1,311 req/s with pools of up to 64 rows, 1,101 up to 256 (pools grew to ~4
    # requests and their calls, one thread's each, held the event loop idle a third of the
    # time), 1,036 up to 20, and 989 with each batch alone (wrk, 16 connections, five 5 s
    # rounds side by side).
    coalesce_max_rows: int = Field(
        default=64,
        ge=0,
        description="cache misses of one turn of the event loop are scored together, in "
        "calls of about this many rows at most: single-row misses in one onnxruntime call, "
        "and the rows of batches that the response cache did not answer decoded, encoded "
        "and scored in one go; 0 scores each request's own",
    )
    # 0.5 ms: coalesced single rows of the NFFM (113 µs a row) served the same req/s capped
    # at 5 rows a call as at 19, at 16 and at 64 connections, with a lower p99.
    coalesce_max_ms: float = Field(
        default=0.5,
        gt=0,
        description="and, on the event loop, no more rows than the model scores in this many "
        "milliseconds",
    )
    # 0.05 ms: the NFFM (~84 µs a row) served 3,820 distinct rows a second with its
    # coalesced calls in a thread against 3,285 on the loop (4,487 against 3,581 in a first
    # A/B); the DeepFM (~12 µs) lost 9% and the default model (~3 µs) 19% that way (wrk, 16
    # connections, rounds of 5 s side by side).
    coalesce_thread_ms: float = Field(
        default=0.05,
        ge=0,
        description="a model whose row costs more than this many milliseconds (timed at "
        "load) has its coalesced calls run in a scoring thread, one at a time (the misses "
        "that arrive meanwhile gather into the next call)",
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
    publish_root: Path | None = Field(
        default=None,
        description="directory under which POST /admin/reload may take a model to copy into "
        "the repository ({'model_dir': ...}); unset: such reloads are refused",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False
    # Off by default: the service's own metrics are Prometheus' (/metrics), and with
    # FastAPI's native telemetry on, every request first asks OpenTelemetry whether any
    # provider is configured: ~4.4 µs a request in process, a sixth of a response-cache
    # hit's time through the whole ASGI stack (21.0 against 25.4 µs). Over HTTP (default
    # model, wrk, 16 connections, 5 s rounds side by side): response-cache hits 13,954
    # against 12,615 req/s, distinct single rows 9,790 against 9,481.
    otel: bool = Field(
        default=False,
        description="FastAPI's native OpenTelemetry: request spans, metrics and logs through "
        "the global providers (or OTLP exporters from the OTEL_* variables with "
        "FASTAPI_OTEL_AUTO_CONFIGURE=true)",
    )

    @field_validator("response_cache_max_bytes")
    @classmethod
    def _usable_response_budget(cls, value: int) -> int:
        if 0 < value < _MIN_RESPONSE_CACHE_BYTES:
            raise ValueError(f"must be 0 (off) or at least {_MIN_RESPONSE_CACHE_BYTES} bytes")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        """Cross-field checks, so a contradictory configuration fails at start-up."""
        if self.inline_max_rows > self.max_batch_size:
            raise ValueError(
                f"inline_max_rows ({self.inline_max_rows}) must not exceed max_batch_size "
                f"({self.max_batch_size}): set CTR_INLINE_MAX_ROWS too"
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
