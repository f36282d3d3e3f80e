"""Errors raised for bad specs and bad feature values.

Both subclass ``ValueError`` so callers that only know "bad input" still catch them; the
service maps them to HTTP 422 and the CLI to a one-line message.
"""


class SpecError(ValueError):
    """A spec.json (or artifact manifest) is missing, malformed or inconsistent."""


class EncodeError(ValueError):
    """A feature value cannot be encoded with the spec.

    Attributes:
        field: the offending field name, so the client learns exactly what to fix.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"field {field!r}: {message}")
        self.field = field
        self.detail = message
