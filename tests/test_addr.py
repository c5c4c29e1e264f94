"""Tests for scheduler.addr: [HOST:]PORT as the dashboard and the metrics server take it."""

from __future__ import annotations

import pytest

from scheduler.addr import is_loopback, parse_addr


class TestParseAddr:
    def test_names_the_option(self) -> None:
        """Messages start with what the caller calls the address, and show its own port."""
        with pytest.raises(ValueError, match=r"^--addr 'x:y': port must be 0..65535 .* as in 8080, :8080"):
            parse_addr("x:y", what="--addr", example_port=8080)

    @pytest.mark.parametrize(
        ("text", "expected"),
        [("8080", ("127.0.0.1", 8080)), (":0", ("127.0.0.1", 0)), ("0.0.0.0:80", ("0.0.0.0", 80))],
    )
    def test_loopback_unless_named(self, text: str, expected: tuple[str, int]) -> None:
        """A bare port listens on loopback."""
        assert expected == parse_addr(text, what="--addr", example_port=8080)


class TestIsLoopback:
    @pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "localhost", "LOCALHOST"])
    def test_loopback(self, host: str) -> None:
        """Loopback addresses and the name localhost."""
        assert is_loopback(host)

    @pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1", "example.com", "localhost.evil.com", ""])
    def test_reachable_from_elsewhere(self, host: str) -> None:
        """Every interface, other addresses, and any other name (it may resolve to anything)."""
        assert not is_loopback(host)
