"""Tests for scheduler.runs: run ids, instants as text, and the one way output tails are cut."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from scheduler.runs import iso_utc, new_run_id, utf8_tail


class TestRunId:
    def test_twelve_hex_digits_each_new(self) -> None:
        """12 lowercase hex digits, and two ids differ."""
        first, second = new_run_id(), new_run_id()
        assert (12, True) == (len(first), all(c in "0123456789abcdef" for c in first))
        assert first != second


class TestIsoUtc:
    def test_any_zone_in_utc(self) -> None:
        """An instant in another zone is given in UTC."""
        at = datetime(2026, 3, 8, 3, 30, tzinfo=timezone(timedelta(hours=-5)))
        assert "2026-03-08T08:30:00+00:00" == iso_utc(at)
        assert iso_utc(at) == iso_utc(at.astimezone(UTC))


class TestUtf8Tail:
    @pytest.mark.parametrize(
        ("text", "limit", "expected"),
        [
            ("hello", 10, b"hello"),
            ("hello", 3, b"llo"),
            ("a€b", 4, "€b".encode()),  # exactly the last character boundary
            ("a€b", 3, b"b"),  # the cut would split € (3 bytes): it is left out
            ("", 5, b""),
            ("\udcff", 5, b"?"),  # an undecodable surrogate is replaced
        ],
    )
    def test_last_bytes_from_a_character_start(self, text: str, limit: int, expected: bytes) -> None:
        """The end of the text, at most `limit` bytes, never starting mid-character."""
        assert expected == utf8_tail(text, limit)
