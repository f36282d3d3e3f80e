"""Decoded Open Inference Protocol requests into the scoring pipeline: one path for HTTP and
gRPC."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from numpy.typing import NDArray
from pydantic_core import to_json

from app.core.config import Settings
from app.features.errors import EncodeError
from app.model.lineup import Lineup
from app.model.scorer import Scorer, ScoringError
from app.protocol.tensors import ProtocolError, check_outputs, http_response, parse_http
from app.scoring.batcher import OverloadedError
from app.scoring.registry import NotReadyError
from app.scoring.service import PredictionService, Scored, ServedModel, UnknownModelError

HEADER_LENGTH = "Inference-Header-Content-Length"  # the binary tensor extension's
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


@dataclass(frozen=True)
class Served:
    """The model a request names and the lineup it is served from, read once."""

    model: ServedModel
    lineup: Lineup
    version: str | None  # the version or label the request names, if any

    @property
    def scorer(self) -> Scorer:
        """The version the request names, else the default (for metadata and readiness)."""
        return self.model.addressed(self.lineup, self.version)


def served(service: PredictionService, name: str, version: str | None) -> Served:
    """The model ``name`` and its lineup, if it is served and has ``version`` (a version
    or a label) loaded: 404 otherwise, 503 while it has no version loaded."""
    try:
        model = service.model(name)
        lineup = model.lineup
        model.addressed(lineup, version)  # 404 now, before the body is read
    except UnknownModelError as exc:
        raise ProtocolError(str(exc), 404) from None
    except NotReadyError as exc:
        raise ProtocolError(str(exc), UNAVAILABLE) from None
    return Served(model, lineup, version or None)


def any_model_ready(service: PredictionService) -> bool:
    """Whether some model has a version loaded that scores a smoke row now."""
    for model in service.models.values():
        lineup = model.registry.loaded
        if lineup is not None and lineup.default.ready():
            return True
    return False


async def score(
    service: PredictionService,
    settings: Settings,
    target: Served,
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

    def first(field: str) -> object:
        column = arrays.get(field)
        return None if column is None or not len(column) else column[0]

    routed = target.model.route(target.lineup, target.version, first)
    try:
        return await service.score(
            routed,
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


async def answer_http(
    service: PredictionService,
    settings: Settings,
    body: bytes,
    header_length: str | None,
    model_name: str,
    version: str | None,
) -> tuple[bytes, int | None]:
    """The answer to a V2 HTTP infer body (JSON, or with the binary tensor extension's
    ``Inference-Header-Content-Length``): its bytes, and the length of its JSON header when
    binary scores follow it (``None``: all JSON). Raises :class:`ProtocolError`."""
    target = served(service, model_name, version)
    started = time.perf_counter()
    decoded = await decode_off_loop(len(body), lambda: parse_http(body, header_length))
    service.parsed(time.perf_counter() - started)
    check_outputs(decoded.outputs)
    scored = await score(service, settings, target, decoded.arrays, decoded.num_rows)
    answer, raw = http_response(
        model_name,
        scored.version,
        decoded.id,
        scored.scores,
        decoded.binary_output,
        scored.cache_hits,
    )
    head = to_json(answer)
    return (head + raw, len(head)) if raw else (head, None)
