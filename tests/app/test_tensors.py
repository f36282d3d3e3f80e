"""BYTES tensors (the binary extension and gRPC raw contents) decode exactly as the protocol
lays them out, whatever the lengths (equal, mixed, empty, with NUL bytes) and however many
(a few, scanned, or many, in numpy); a count that does not match the data is a clear 400."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.protocol.tensors import _SCAN_ELEMENTS, ProtocolError, decode_bytes
from support.payloads import bytes_tensor


def _reference(raw: bytes) -> list[bytes]:
    """The protocol's layout read plainly: a 4-byte little-endian length, then the bytes."""
    elements, position = [], 0
    while position < len(raw):
        (size,) = struct.unpack_from("<I", raw, position)
        elements.append(raw[position + 4 : position + 4 + size])
        position += 4 + size
    return elements


# ids as clients send them: text with no NUL, empty (missing) included
_TEXT = st.text(st.characters(min_codepoint=1, exclude_categories=["Cs"]), max_size=20).map(
    str.encode
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=8),
            _TEXT,
            st.binary(min_size=250, max_size=300),
            st.sampled_from([b"", b"\x00", b"a\x00", b"c0_12"]),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_bytes_decode_as_the_protocol_lays_them_out(values: list[bytes]) -> None:
    # as they came (a few elements: the scan), and repeated past the scan's limit (numpy)
    for elements in (values, values * (_SCAN_ELEMENTS // len(values) + 1)):
        decoded = decode_bytes("c0", bytes_tensor(elements), len(elements))
        assert _reference(bytes_tensor(elements)) == elements
        if decoded.dtype == object:  # values ending in NUL: kept exact as text
            assert decoded.tolist() == [v.decode("utf-8", "replace") for v in elements]
        else:
            assert decoded.tolist() == elements


@pytest.mark.parametrize(
    ("raw", "count", "message"),
    [
        (bytes_tensor([b"ab", b"c"]), 3, "2 BYTES elements for shape of 3"),
        (bytes_tensor([b"ab", b"c"]), 1, "more BYTES elements"),
        (bytes_tensor([b"ab"])[:-1], 1, "runs past the data"),
        (bytes_tensor([b"ab"]) + b"\x01\x00", 2, "ends inside an element's length"),
        (bytes_tensor([b"ab", b"c"] * 50), 101, "100 BYTES elements for shape of 101"),
        (bytes_tensor([b"ab"] * 100)[:-1], 100, "runs past the data"),
        (bytes_tensor([b"ab", b"c"] * 50), 99, "more BYTES elements"),
    ],
)
def test_a_count_that_does_not_match_the_data_is_named(
    raw: bytes, count: int, message: str
) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_bytes("c0", raw, count)
