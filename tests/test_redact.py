"""Tests for scheduler.redact: passwords never reach output, however libpq (or a careless URL) spells them."""

from __future__ import annotations

import pytest

from scheduler.redact import host_only, redact, secrets


class TestRedact:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("postgresql://u:s3cret@h:5432/db", "postgresql://u:***@h:5432/db"),
            ("postgresql://u:pa?ss@h/db", "postgresql://u:***@h/db"),
            ("postgresql://u:p#w@h/db", "postgresql://u:***@h/db"),
            ("postgresql://u:a/b@h/db", "postgresql://u:***@h/db"),
            ("postgresql://u:p@ss/w@h/db", "postgresql://u:***@h/db"),
            ("postgresql://u:p?w@h?sslmode=require", "postgresql://u:***@h?sslmode=require"),
            ("postgresql://u:pa?ss@h/db?sslmode=require", "postgresql://u:***@h/db?sslmode=require"),
            ("postgresql://u:p%40ss%3F@h/db", "postgresql://u:***@h/db"),
            ("postgres://u:x@h/db?application_name=a@b", "postgres://u:***@b"),
            (
                "postgresql://h/db?user=u&password=s3cret&sslmode=require",
                "postgresql://h/db?user=u&password=***&sslmode=require",
            ),
            ("postgresql://h/db?PASSWORD=s3cret", "postgresql://h/db?PASSWORD=***"),
            ("postgresql://h/db?pass%77ord=s3cret", "postgresql://h/db?pass%77ord=***"),
            ("host=h password=s3cret dbname=db", "host=h password=*** dbname=db"),
            ("host=h password = 's3 cret' dbname=db", "host=h password = *** dbname=db"),
        ],
    )
    def test_password_hidden(self, url: str, expected: str) -> None:
        """The password is hidden whole, whatever it holds, in a URI or a key=value conninfo string."""
        assert expected == redact(url)
        assert "s3cret" not in redact(url)

    @pytest.mark.parametrize(
        "url",
        [
            "postgresql://app@db.example/prod",
            "postgresql:///prod",
            "postgresql://db.example/prod?sslmode=require",
            "sqlite:////var/lib/a:b@c.db",
            "sqlite:///x.db",
            "host=h dbname=db",
        ],
    )
    def test_no_password_unchanged(self, url: str) -> None:
        """A URL without a password is shown as it is."""
        assert url == redact(url)


class TestSecrets:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("postgresql://u:pa?ss@h/db", ["pa?ss"]),
            ("postgresql://u:p%40ss@h/db", ["p%40ss", "p@ss"]),
            ("postgresql://h/db?password=x%2Fy", ["x%2Fy", "x/y"]),
            ("host=h password='a b'", ["a b"]),
            ("postgresql://u@h/db", []),
        ],
    )
    def test_as_written_and_decoded(self, url: str, expected: list[str]) -> None:
        """Each password as written and percent-decoded, longest first, to scrub from driver messages."""
        assert expected == secrets(url)


class TestHostOnly:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("https://hc.example.com/ping/x", "https://hc.example.com"),
            ("https://u:p#w@hc.example.com:8000/x", "https://hc.example.com:8000"),
            ("https://u:pa?ss@hc.example.com/x", "https://hc.example.com"),
            ("https://hc.example.com?x=1", "https://hc.example.com"),
            ("hc.example.com/x", None),
        ],
    )
    def test_scheme_and_host(self, url: str, expected: str | None) -> None:
        """Only the scheme and the host (and port) are left."""
        assert expected == host_only(url)
