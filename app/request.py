"""What the service knows of the request being answered, whichever protocol carried it: its
id and its headers (for sticky keys), and how a key picks a share of traffic the same way in
every worker and replica."""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import secrets
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

import numpy as np

from app.features.encoder import canonical_token

REQUEST_ID_HEADER = "x-request-id"
_MAX_REQUEST_ID = 128


@dataclass(frozen=True)
class RequestContext:
    """A request's id and its headers as (lower-case name, value) byte pairs: an HTTP
    request's ASGI headers as they are, a gRPC call's metadata."""

    request_id: str
    headers: Sequence[tuple[bytes, bytes]] = ()

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (lower case), if the request sent it."""
        wanted = name.encode("latin-1")
        for key, value in self.headers:
            if key == wanted:
                return value.decode("latin-1")
        return None


# Set by the HTTP middleware and the gRPC servicer for the request being answered.
CURRENT_REQUEST: ContextVar[RequestContext | None] = ContextVar("ctr_request", default=None)


# A new request id: this process's random prefix and a counter, 32 hex digits, unique
# across workers and replicas without drawing random bytes for every request.
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count()


def _new_id_prefix() -> None:
    global _ID_PREFIX  # a forked worker must not count on from its parent's prefix
    _ID_PREFIX = secrets.token_hex(8)


os.register_at_fork(after_in_child=_new_id_prefix)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def valid_request_id(value: str | None) -> str | None:
    """A client's request id if it is one (printable ASCII, at most 128 characters):
    anything else is replaced by a new id rather than refused."""
    if value and len(value) <= _MAX_REQUEST_ID and value.isascii() and value.isprintable():
        return value
    return None


@dataclass(frozen=True)
class StickyKey:
    """Where a request's sticky key comes from: ``header:<name>`` or ``feature:<field>``."""

    source: Literal["header", "feature"]
    name: str

    @classmethod
    def parse(cls, text: str) -> StickyKey:
        source, _, name = text.partition(":")
        if source not in ("header", "feature") or not name:
            raise ValueError(f"expected header:<name> or feature:<field>, got {text!r}")
        return cls(source, name.lower() if source == "header" else name)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.source}:{self.name}"


def in_share(key: str, share: float) -> bool:
    """Whether ``key`` falls in the first ``share`` (0..1) of keys: the same answer in every
    worker and replica, since the hash (BLAKE2b, 64 bits) has no per-process seed; and an
    even share of similar keys (``user-1``, ``user-2``...), which CRC-32 does not give."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest) < share * 2**64


def key_token(value: object) -> str | None:
    """A request's value as a sticky key: spelled as the model looks a categorical value up
    (``5`` and ``"5"`` alike); ``None`` when missing."""
    if isinstance(value, bytes | np.bytes_):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN in a binary tensor means missing
    try:
        return canonical_token(value)
    except TypeError:
        return str(value)
