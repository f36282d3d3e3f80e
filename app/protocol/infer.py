"""Decoded Open Inference Protocol requests into the scoring pipeline: one path for HTTP and
gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from numpy.typing import NDArray

from app.core.config import Settings
from app.features.errors import EncodeError
from app.protocol.tensors import ProtocolError
from app.scoring.batcher import OverloadedError
from app.scoring.scorer import Scorer, ScoringError
from app.scoring.service import PredictionService, Scored

PAYLOAD_TOO_LARGE = 413
UNAVAILABLE = 503
# Bodies this large (~3,000 rows of 10 fields) take milliseconds to decode: a thread does it
# so the loop answers others; below it, the hop costs about what decoding does
# (docs/BENCHMARKS.md, "Open Inference Protocol").
LARGE_BODY_BYTES = 256 * 1024

_Decoded = TypeVar("_Decoded")


async def decode_off_loop(size: int, decode: Callable[[], _Decoded]) -> _Decoded:
    """``decode()``, in a thread when the body is ``LARGE_BODY_BYTES`` or more."""
    if size < LARGE_BODY_BYTES:
        return decode()
    return await asyncio.to_thread(decode)


class OverloadedProtocolError(ProtocolError):
    """The service is overloaded: 503 with Retry-After over HTTP, UNAVAILABLE over gRPC."""

    def __init__(self, message: str) -> None:
        super().__init__(message, UNAVAILABLE)


def served(service: PredictionService, name: str, version: str | None) -> Scorer:
    """The loaded model, if ``name`` (the repository's name) and ``version`` are what serves."""
    scorer = service.registry.current
    served_name = service.registry.repository.name
    if name != served_name:
        raise ProtocolError(f"unknown model '{name}'; this server serves '{served_name}'", 404)
    if version and version != scorer.version:
        raise ProtocolError(
            f"model '{name}' version '{version}' is not loaded; serving '{scorer.version}'", 404
        )
    return scorer


async def score(
    service: PredictionService,
    settings: Settings,
    scorer: Scorer,
    arrays: Mapping[str, NDArray[Any]],
    rows: int,
) -> Scored:
    """Score one array per field through the pipeline /predict uses; every failure is a
    :class:`ProtocolError` with its status."""
    if rows > settings.max_batch_size:
        raise ProtocolError(
            f"batch of {rows} rows exceeds the limit of {settings.max_batch_size} "
            "(CTR_MAX_BATCH_SIZE)",
            PAYLOAD_TOO_LARGE,
        )
    try:
        return await service.score(
            scorer,
            lambda encoder: encoder.encode_columns(arrays, rows),
            rows,
            lambda encoder: arrays,
        )
    except EncodeError as exc:
        raise ProtocolError(f"input '{exc.field}': {exc.detail}") from None
    except OverloadedError as exc:
        raise OverloadedProtocolError(f"overloaded: {exc}") from None
    except ScoringError:
        raise ProtocolError(
            "the model could not score this request; try again", UNAVAILABLE
        ) from None
