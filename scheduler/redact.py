"""Secrets out of URLs before they reach a log, an error message or the terminal.

libpq takes a URI's user info up to the first '@' (it does not stop at '?' or '#'), and a careless URL may
hold a raw '@', '/', '?' or '#' in its password: so the user info here ends at the last '@' before the query,
which covers both readings. Hiding too much (a host, when a query holds an '@') is the safe side.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

HIDDEN = "***"

# A password given as a key=value: in a URI's query (password=x&...) or a conninfo string (password=x or
# password='x y'). libpq also decodes percent-escapes in a query's keys.
_PASSWORD_PARAM = re.compile(r"(?i)(\b(?:password|pass%77ord)\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s]*)")


def split_userinfo(url: str) -> tuple[str, str, str] | None:
    """(scheme://, user info, the rest after its '@') of a URL with user info; None without any.

    A SQLite URL's path may hold ':' and '@'; only a (wrong) sqlite://user:pw@host/... has user info.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or (scheme.lower() == "sqlite" and rest.startswith("/")):
        return None
    # The query starts at the first '?' after the last '/' (a password may hold both), or after the '@'
    # when no '/' follows it (postgresql://u:p?w@host?sslmode=require).
    at = rest.rfind("@")
    if at < 0:
        return None
    slash = rest.find("/", at)
    question = rest.find("?", slash if slash >= 0 else at)
    before_query = rest if question < 0 else rest[:question]
    at = before_query.rfind("@")
    if at < 0:
        return None
    return f"{scheme}{sep}", before_query[:at], rest[at + 1 :]


def redact(url: str) -> str:
    """The URL (or key=value conninfo string) with any password replaced by '***': safe to log.

    postgresql://user:pa?ss@host/db -> postgresql://user:***@host/db; ...?password=x -> ...?password=***;
    host=h password='x y' -> host=h password=***.
    """
    parts = split_userinfo(url)
    if parts is not None:
        prefix, userinfo, hostpath = parts
        user, colon, _ = userinfo.partition(":")
        if colon:
            url = f"{prefix}{user}:{HIDDEN}@{hostpath}"
    return _PASSWORD_PARAM.sub(rf"\1{HIDDEN}", url)


def secrets(url: str) -> list[str]:
    """The passwords in a URL, as written and percent-decoded, longest first: to scrub from driver
    messages, which may quote them in either form."""
    found = [match.group(2).strip("'") for match in _PASSWORD_PARAM.finditer(url)]
    parts = split_userinfo(url)
    if parts is not None:
        _user, colon, password = parts[1].partition(":")
        if colon:
            found.append(password)
    variants = {variant for secret in found for variant in (secret, unquote(secret)) if variant}
    return sorted(variants, key=len, reverse=True)


def host_only(url: str) -> str | None:
    """'scheme://host[:port]' of a URL, with no user info, path, query or fragment; None if it has none."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        return None
    parts = split_userinfo(url)
    if parts is not None:
        rest = parts[2]
    host = re.split(r"[/?#]", rest, maxsplit=1)[0]
    return f"{scheme}://{host}" if host else None
