"""Line framing: splitting bytes into lines, CRLF, blank lines, the size cap, EOF."""

from __future__ import annotations

import pytest

from zeusd.rpc.framing import LineBuffer


def test_complete_lines_are_returned_without_newline() -> None:
    """Two lines in one chunk come back as two lines."""
    buf = LineBuffer(100)
    assert buf.feed(b'{"a":1}\n{"b":2}\n') == [b'{"a":1}', b'{"b":2}']
    assert buf.pending_bytes == 0


def test_line_split_across_chunks_is_joined() -> None:
    """A line arriving in pieces is returned once, whole."""
    buf = LineBuffer(100)
    assert buf.feed(b'{"a"') == []
    assert buf.feed(b":1") == []
    assert buf.feed(b"}\nrest") == [b'{"a":1}']
    assert buf.pending_bytes == 4


def test_crlf_is_stripped_even_when_split() -> None:
    """A \\r before \\n is dropped, also when \\r and \\n arrive in separate chunks."""
    buf = LineBuffer(100)
    assert buf.feed(b"abc\r\n") == [b"abc"]
    assert buf.feed(b"def\r") == []
    assert buf.feed(b"\n") == [b"def"]


def test_inner_carriage_return_is_kept() -> None:
    """Only a \\r right before \\n is framing; one elsewhere is data."""
    assert LineBuffer(100).feed(b"a\rb\n") == [b"a\rb"]


def test_empty_lines_are_returned_for_the_dispatcher_to_skip() -> None:
    """Empty lines are still lines; ignoring them is the dispatcher's rule."""
    assert LineBuffer(100).feed(b"\n\r\n") == [b"", b""]


def test_close_returns_unterminated_last_line() -> None:
    """At EOF a last line without \\n is still delivered."""
    buf = LineBuffer(100)
    buf.feed(b"one\ntwo")
    assert buf.close() == b"two"
    assert buf.close() is None


def test_close_strips_trailing_carriage_return() -> None:
    """A final 'x\\r' at EOF is the line 'x'."""
    buf = LineBuffer(100)
    buf.feed(b"x\r")
    assert buf.close() == b"x"


def test_line_at_limit_is_accepted() -> None:
    """Exactly max_line_bytes of content is allowed (CRLF not counted)."""
    buf = LineBuffer(5)
    assert buf.feed(b"12345\r\n") == [b"12345"]
    assert not buf.overflowed


def test_complete_line_over_limit_overflows() -> None:
    """A whole line one byte too long sets overflowed and is not returned."""
    buf = LineBuffer(5)
    assert buf.feed(b"123456\n") == []
    assert buf.overflowed


def test_partial_line_over_limit_overflows_before_newline() -> None:
    """The cap triggers as soon as it is passed, without waiting for the newline."""
    buf = LineBuffer(5)
    buf.feed(b"12345")
    assert not buf.overflowed
    buf.feed(b"6")
    assert buf.overflowed


def test_lines_before_an_overflow_are_still_returned() -> None:
    """Complete lines in the same chunk as an oversized one are delivered first."""
    buf = LineBuffer(5)
    assert buf.feed(b"ab\ncd\n" + b"x" * 10) == [b"ab", b"cd"]
    assert buf.overflowed


def test_overflowed_buffer_takes_no_more_input() -> None:
    """After an overflow nothing more is buffered or returned."""
    buf = LineBuffer(5)
    buf.feed(b"x" * 10)
    assert buf.feed(b"\nok\n") == []
    assert buf.pending_bytes == 0


def test_pending_carriage_return_does_not_count_against_limit() -> None:
    """'12345\\r' may still become a valid 5-byte line."""
    buf = LineBuffer(5)
    assert buf.feed(b"12345\r") == []
    assert buf.feed(b"\n") == [b"12345"]


def test_trickled_bytes_are_found() -> None:
    """Byte-at-a-time input yields the same lines as one chunk."""
    buf = LineBuffer(100)
    lines = []
    for byte in b"ab\ncd\n":
        lines += buf.feed(bytes([byte]))
    assert lines == [b"ab", b"cd"]


def test_limit_must_be_positive() -> None:
    """A zero cap is a programming error."""
    with pytest.raises(ValueError, match="max_line_bytes"):
        LineBuffer(0)
