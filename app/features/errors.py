"""Errors raised for bad specs and bad feature values.

Both subclass ``ValueError`` so callers that only know "bad input" still catch them; the
service maps them to HTTP 422 and the CLI to a one-line message.
"""

from __future__ import annotations


class SpecError(ValueError):
    """A spec.json (or artifact manifest) is missing, malformed or inconsistent."""


class EncodeError(ValueError):
    """A feature value cannot be encoded with the spec.

    Attributes:
        field: the offending field name, so the client learns exactly what to fix.
        row: the offending row's place in a batch, when the error came from one.
    """

    def __init__(self, field: str, message: str, row: int | None = None) -> None:
        where = f"field {field!r}" if row is None else f"row {row}, field {field!r}"
        super().__init__(f"{where}: {message}")
        self.field = field
        self.detail = message
        self.row = row

    def in_row(self, row: int) -> EncodeError:
        """The same error, placed at ``row`` of a batch."""
        return EncodeError(self.field, self.detail, row)
