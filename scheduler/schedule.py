"""PURE: schedule text -> fire instants, with Debian cron's DST rules.

A schedule is cron (5 fields, or 6 with seconds first), an ``@alias`` or a Heroku-style phrase; all three
become one cron expression. Plain fields (numbers, names, ranges, lists, steps) are read here, checked
against croniter by the tests; ``H`` and anything unusual go to croniter. The search for the next fire is
ours, because croniter alone fires a repeated local time twice and we follow Debian cron:

* A *fixed-time* task (neither its minute nor its hour field starts with ``*``) runs once per matching
  local time: a local time skipped by a spring-forward runs right after the jump; a local time that
  happens twice at a fall-back runs at its first occurrence only.
* Any other task keeps its real-time cadence: it fires at every real instant whose local wall-clock time
  matches, so ``*/15 * * * *`` runs every 15 real minutes through both changes, and not at all in an hour
  that does not exist.

Time is always a parameter: nothing here reads the clock.
"""

from __future__ import annotations

import bisect
import calendar
import difflib
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from scheduler.errors import ScheduleError
from scheduler.frozen import pickle_by_fields

_SECOND = timedelta(seconds=1)
_ALL_WEEKDAYS = 0b1111111
_ALL_DAYS = ((1 << 32) - 1) & ~1  # bits 1-31
_FAR_FUTURE = datetime(9999, 1, 1)
_Y2K = datetime(2000, 1, 1)
_MONTH_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # the most each month can have
_DAY = timedelta(days=1)
_ZERO = timedelta(0)
# How far ahead a schedule must fire at least once to be valid: the Gregorian calendar repeats every
# 400 years, so a cron expression that finds no match in 400 years never fires.
_HORIZON_YEARS = 400
# Offsets are sampled this often to find a zone's transitions (then bisected to the second); real
# transitions are weeks apart, never two within this step.
_SAMPLE_STEP = timedelta(hours=12)
# Zones that never change their offset: no transitions to look for.
_FIXED_ZONES = frozenset(
    {"UTC", "Etc/UTC", "Etc/UCT", "Etc/Universal", "Etc/Zulu", "UCT", "Universal", "Zulu", "GMT", "Etc/GMT"}
)

ACCEPTED_FORMS = (
    "cron with 5 fields 'MIN HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK' (e.g. '0 9 * * MON-FRI'); "
    "6 fields with seconds first (e.g. '*/10 * * * * *'); "
    "@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly; "
    "'H' in a field picks a value hashed from the task's name; "
    "phrases: 'every N seconds', 'every N minutes' (N divides 60), 'every N hours' (N divides 24), "
    "'every hour', 'hourly at :MM', 'every 2 hours at :30', 'daily at 09:00', 'every day at 9:30pm', "
    "'every weekday at 9am', 'every weekend at 10:30', 'every monday and thursday at 9am', "
    "'twice a day at 9am and 9pm', 'twice a day'"
)

_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_DAY_NAMES = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_MONTH_NAMES = (
    *("January", "February", "March", "April", "May", "June"),
    *("July", "August", "September", "October", "November", "December"),
)
_FIELD_NAMES = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")
_FIELD_RANGES = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
# Letters allowed in a cron field: month and day names, and H.
_FIELD_RE = re.compile(r"^[0-9A-Za-z*,/()\-]+$")
_EXPRESSION_RE = re.compile(r"^[0-9A-Za-z*,/()\- ]+$")
# L, W and # (last day, nearest weekday, nth weekday) and ? are Quartz extensions we do not offer; R is
# croniter's random value, which would change on every restart.
_HASH_RE = re.compile(r"(?<![A-Za-z])H", re.IGNORECASE)
_UNSUPPORTED_RE = re.compile(r"[#?]|(?<![A-Za-z])[LWR](?![A-Za-z])", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Fire:
    """One fire instant: `at` is aware UTC; `note` says how a DST change moved or repeated it, else None."""

    at: datetime
    note: str | None = None


@pickle_by_fields
@dataclass(frozen=True, slots=True)
class _Fields:
    """The values a cron expression allows, one bitmask per field (bit v set: value v allowed)."""

    seconds: int
    minutes: int
    hours: int
    days: int  # bit 1 is the 1st
    months: int  # bit 1 is January
    weekdays: int  # cron numbering: bit 0 is Sunday
    # Vixie cron: when either day field starts with '*', a day must match both; otherwise either.
    days_and: bool

    def day_matches(self, day: datetime) -> bool:
        dom = self.days >> day.day & 1
        dow = self.weekdays >> (day.weekday() + 1) % 7 & 1
        return bool(dom and dow) if self.days_and else bool(dom or dow)

    def next_match(self, start: datetime, limit: datetime) -> datetime | None:
        """The first naive local time >= `start` (whole seconds) and < `limit` that the fields match."""
        t = start
        while t < limit:
            if not self.months >> t.month & 1:
                month = _next_bit(self.months, t.month)
                t = (
                    datetime(t.year, month, 1)
                    if month is not None
                    else datetime(t.year + 1, _low_bit(self.months), 1)
                )
                continue
            if not self.day_matches(t):
                t = self._next_day(t)
                continue
            if not self.hours >> t.hour & 1:
                t = self._next_hour(t)
                continue
            if not self.minutes >> t.minute & 1:
                minute = _next_bit(self.minutes, t.minute)
                t = t.replace(minute=minute, second=0) if minute is not None else self._next_hour(t)
                continue
            if not self.seconds >> t.second & 1:
                second = _next_bit(self.seconds, t.second)
                if second is not None:
                    t = t.replace(second=second)
                else:
                    minute = _next_bit(self.minutes, t.minute + 1)
                    t = t.replace(minute=minute, second=0) if minute is not None else self._next_hour(t)
                continue
            return t
        return None

    def _next_day(self, t: datetime) -> datetime:
        """Midnight of the next day that may match: straight to the next allowed day of the month when
        the weekday does not matter, else the next day."""
        if self.days_and and self.weekdays == _ALL_WEEKDAYS:
            day = _next_bit(self.days, t.day + 1)
            if day is not None and day <= calendar.monthrange(t.year, t.month)[1]:
                return datetime(t.year, t.month, day)
            return datetime(t.year + t.month // 12, t.month % 12 + 1, 1)
        return datetime(t.year, t.month, t.day) + _DAY

    def _next_hour(self, t: datetime) -> datetime:
        hour = _next_bit(self.hours, t.hour + 1)
        if hour is not None:
            return datetime(t.year, t.month, t.day, hour)
        return datetime(t.year, t.month, t.day) + _DAY


def _next_bit(mask: int, start: int) -> int | None:
    """The smallest set bit of `mask` at or above `start`, or None."""
    rest = mask >> start
    return start + _low_bit(rest) if rest else None


def _low_bit(mask: int) -> int:
    return (mask & -mask).bit_length() - 1


def _bits(mask: int) -> tuple[int, ...]:
    return tuple(v for v in range(mask.bit_length()) if mask >> v & 1)


@functools.lru_cache(maxsize=4096)
def _transitions(zone: ZoneInfo, year: int) -> tuple[tuple[datetime, ...], tuple[timedelta, ...]]:
    """The instants (naive UTC) in `year` at which `zone`'s UTC offset changes, and each new offset."""
    if zone.key in _FIXED_ZONES:
        return (), ()
    start = datetime(year, 1, 1)
    end = datetime(year + 1, 1, 1)
    at: list[datetime] = []
    offsets: list[timedelta] = []
    prev_t, prev_off = start, _offset(zone, start)
    t = start
    while t < end:
        t = min(t + _SAMPLE_STEP, end)
        off = _offset(zone, t)
        if off != prev_off:
            lo, hi = prev_t, t  # offset(lo) == prev_off, offset(hi) != prev_off
            while hi - lo > _SECOND:
                mid = lo + (hi - lo) / 2
                mid = mid.replace(microsecond=0)
                if _offset(zone, mid) == prev_off:
                    lo = mid
                else:
                    hi = mid
            at.append(hi)
            offsets.append(off)
        prev_t, prev_off = t, off
    return tuple(at), tuple(offsets)


def _offset(zone: ZoneInfo, utc_naive: datetime) -> timedelta:
    off = zone.fromutc(utc_naive.replace(tzinfo=zone)).utcoffset()
    return off if off is not None else _ZERO


def _segment(zone: ZoneInfo, t: datetime) -> tuple[timedelta, datetime, timedelta]:
    """The offset in force at naive-UTC instant `t`, the end of the span where it holds, and the offset
    after that end (the same offset when the span merely ends with the year)."""
    at, offsets = _transitions(zone, t.year)
    i = bisect.bisect_right(at, t)
    off = offsets[i - 1] if i > 0 else _offset(zone, datetime(t.year, 1, 1))
    if i < len(at):
        return off, at[i], offsets[i]
    return off, datetime(t.year + 1, 1, 1), off


@pickle_by_fields
@dataclass(frozen=True, slots=True)
class Schedule:
    """A parsed schedule in one zone. Equal schedules fire at the same instants."""

    text: str
    cron: str
    zone_key: str
    name: str
    zone: ZoneInfo = field(compare=False, repr=False)
    _fields: _Fields = field(compare=False, repr=False)
    fixed_time: bool = field(compare=False, default=False)

    def next_fire(self, after: datetime) -> Fire:
        """The first fire strictly after `after` (an aware datetime).

        DST policy (Debian cron): a fixed-time task whose local time falls in a spring-forward gap fires
        once at the end of the gap, and fires only at the first of two repeated local times; any other
        task fires at every real instant whose local time matches.
        """
        t = after.astimezone(UTC).replace(tzinfo=None, microsecond=0) + _SECOND
        f = self._fields
        if self.zone.key in _FIXED_ZONES:  # no DST: local time is UTC, nothing is skipped or repeated
            local = f.next_match(t, _FAR_FUTURE)
            if local is not None:
                return Fire(local.replace(tzinfo=UTC))
        # Bounded: a valid schedule matches within the horizon, and each pass moves t to a span's end.
        for _ in range(_HORIZON_YEARS * 4 * 3):
            off, end, off_after = _segment(self.zone, t)
            limit = end + off
            local = f.next_match(t + off, limit)
            while local is not None:
                at = local - off
                repeated, note = self._fold(local, at)
                # A fixed-time task already ran at the first of two repeated local times.
                if not (repeated and self.fixed_time):
                    return Fire(at.replace(tzinfo=UTC), note)
                local = f.next_match(local + _SECOND, limit)
            if self.fixed_time and off_after > off:
                skipped = f.next_match(limit, end + off_after)
                if skipped is not None:
                    ran = (end + off_after).strftime("%H:%M")
                    note = f"{skipped:%H:%M} did not exist (DST started); ran at {ran}"
                    return Fire(end.replace(tzinfo=UTC), note)
            t = end
        raise ScheduleError(f"'{self.text}' does not fire after {after.isoformat()}")

    def _fold(self, local: datetime, at: datetime) -> tuple[bool, str | None]:
        """Whether `at` is the second occurrence of a local time that happens twice (DST ended), and
        a note for either occurrence; (False, None) when the local time is unique."""
        first = local.replace(tzinfo=self.zone, fold=0).astimezone(UTC).replace(tzinfo=None)
        second = local.replace(tzinfo=self.zone, fold=1).astimezone(UTC).replace(tzinfo=None)
        if first == second:
            return False, None
        if at == first:
            return False, f"first of two {local:%H:%M}s (DST ended)"
        return True, f"second {local:%H:%M} (DST ended)"

    def fires(self, after: datetime, count: int) -> list[Fire]:
        """The next `count` fires strictly after `after`."""
        out: list[Fire] = []
        for _ in range(count):
            fire = self.next_fire(after)
            out.append(fire)
            after = fire.at
        return out

    def describe(self) -> str:
        """The schedule in plain words, e.g. 'at 09:00 on Monday through Friday'."""
        return _describe(self._fields, self.cron)


def parse(text: str, *, name: str, zone: ZoneInfo) -> Schedule:
    """Parse a schedule for task `name` in `zone`; raises ScheduleError naming the bad value."""
    if not isinstance(text, str) or not text.strip():
        raise ScheduleError(f"empty schedule; accepted forms: {ACCEPTED_FORMS}")
    cron = _to_cron(text)
    raw = cron.split()
    if len(raw) not in (5, 6):
        raise ScheduleError(
            f"'{text}' has {len(raw)} fields; expected 5 (or 6 with seconds first); "
            f"accepted forms: {ACCEPTED_FORMS}"
        )
    if len(raw) == 5:
        raw = ["0", *raw]
    fields = _expand(text, " ".join(raw), raw, name)
    fixed = not raw[1].startswith("*") and not raw[2].startswith("*")
    return Schedule(
        text=text, cron=cron, zone_key=zone.key, name=name, zone=zone, _fields=fields, fixed_time=fixed
    )


@functools.lru_cache(maxsize=4096)
def _to_cron(text: str) -> str:
    """Phrases and aliases to a cron expression; cron passes through, whitespace normalized. Cached: a
    large file repeats a few phrases, and reading one takes microseconds."""
    words = " ".join(text.split())
    lower = words.lower()
    if lower.startswith("@"):
        if lower not in _ALIASES:
            raise ScheduleError(f"unknown alias '{words}'; accepted forms: {ACCEPTED_FORMS}")
        return _ALIASES[lower]
    # A cron expression's first field (seconds or minutes) is numeric, '*' or H; a word starts a phrase, and
    # so does a count ('3 times a day').
    if (re.match(r"^[a-z]", lower) and not re.match(r"^h(?![a-z])", lower)) or re.match(
        r"^\d+ times\b", lower
    ):
        return _Phrase(words).cron()
    return words


# Phrases. Each maps to exactly one cron expression; a phrase that cron cannot express exactly is an error
# that says why and what comes nearest, never a silent approximation.

_WHOLE = {"second": 60, "minute": 60, "hour": 24}  # how many of a unit make the next one
_NEXT_UNIT = {"second": "minute", "minute": "hour", "hour": "day"}
_UNIT_WORDS = {
    **{word: "second" for word in ("second", "seconds", "sec", "secs")},
    **{word: "minute" for word in ("minute", "minutes", "min", "mins")},
    **{word: "hour" for word in ("hour", "hours")},
    **{word: "day" for word in ("day", "days")},
    **{word: "week" for word in ("week", "weeks")},
}
_NUMBER_WORDS = {
    word: n
    for n, word in enumerate(
        ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"), 1
    )
}
_WEEKDAYS = (1, 2, 3, 4, 5)
_WEEKEND = (0, 6)
_DAY_WORDS: dict[str, tuple[int, ...]] = {
    **{name.lower() + suffix: (i,) for i, name in enumerate(_DAY_NAMES) for suffix in ("", "s")},
    **{name[:3].lower(): (i,) for i, name in enumerate(_DAY_NAMES)},
    **{"tues": (2,), "weds": (3,), "thur": (4,), "thurs": (4,)},
    **{"weekday": _WEEKDAYS, "weekdays": _WEEKDAYS, "weekend": _WEEKEND, "weekends": _WEEKEND},
}
_COUNT_WORDS = {"once": 1, "twice": 2, "thrice": 3}
_TIME_WORDS = {"noon": (12, 0), "midnight": (0, 0)}
_OTHER_WORDS = ("every", "hourly", "daily", "at", "and", "a", "per", "times", "am", "pm")
_PHRASE_WORDS = frozenset(
    (*_UNIT_WORDS, *_NUMBER_WORDS, *_DAY_WORDS, *_COUNT_WORDS, *_TIME_WORDS, *_OTHER_WORDS)
)
_TIME_FORMS = "write 09:00, 21:30, 9am, 9:30pm, noon or midnight"
# One token of a phrase: ',' or a run of anything but spaces and commas.
_CHUNK = re.compile(r",|[^\s,]+")
_CLOCK = re.compile(r"(\d{1,2})(?::(\d{2}))?([ap]m)")  # 9am, 9:30pm (12-hour)
_TIME = re.compile(r"(\d{1,2}):(\d{2})")  # 09:00, 21:30 (24-hour)
_MINUTE = re.compile(r":(\d{1,2})")  # :15


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # word, number, time (hour, minute known), minute, comma
    text: str  # as written
    value: tuple[int, ...] = ()


class _Phrase:
    """One phrase, read word by word (a small recursive-descent reader) into a cron expression."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = self._tokens(text)
        self.at = 0

    # -- tokens ---------------------------------------------------------------------------------------------

    def _tokens(self, text: str) -> list[_Token]:
        tokens: list[_Token] = []
        for chunk in _CHUNK.findall(text):
            lower = chunk.lower()
            if lower in ("am", "pm") and tokens and tokens[-1].kind in ("number", "time"):
                # '9 am', '9:30 pm': the 12-hour time written with a space.
                tokens[-1] = self._clock(tokens[-1].text + lower)
            elif chunk == ",":
                tokens.append(_Token("comma", chunk))
            elif lower.isdecimal():
                tokens.append(_Token("number", chunk, (int(lower),)))
            elif _CLOCK.fullmatch(lower):
                tokens.append(self._clock(lower))
            elif m := _TIME.fullmatch(lower):
                hour, minute = int(m[1]), int(m[2])
                if hour > 23 or minute > 59:
                    raise self._error(f"{chunk} is not a time of day (00:00-23:59)")
                tokens.append(_Token("time", chunk, (hour, minute)))
            elif m := _MINUTE.fullmatch(lower):
                minute = int(m[1])
                if minute > 59:
                    raise self._error(f"minute {minute} is out of range 0-59")
                tokens.append(_Token("minute", chunk, (minute,)))
            elif lower in _TIME_WORDS:
                tokens.append(_Token("time", chunk, _TIME_WORDS[lower]))
            elif lower.isalpha() and lower in _PHRASE_WORDS:
                tokens.append(_Token("word", lower))
            elif lower.isalpha():
                close = difflib.get_close_matches(lower, sorted(_PHRASE_WORDS), n=1, cutoff=0.75)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ScheduleError(
                    f"unknown word '{chunk}' in schedule '{text}'{hint}; accepted forms: {ACCEPTED_FORMS}"
                )
            else:
                raise self._error(f"cannot read '{chunk}' ({_TIME_FORMS} for a time, ':15' for a minute)")
        return tokens

    def _clock(self, text: str) -> _Token:
        """A 12-hour time: 12am is midnight, 12pm is noon, and the hour goes from 1 to 12."""
        m = _CLOCK.fullmatch(text.replace(" ", ""))
        assert m is not None
        hour, minute = int(m[1]), int(m[2] or 0)
        if not 1 <= hour <= 12:
            raise self._error(
                f"{text} is not a time of day: with am or pm the hour goes from 1 to 12 "
                f"(12am is midnight, 12pm is noon){f'; write {hour:02d}:{minute:02d}' if hour < 24 else ''}"
            )
        if minute > 59:
            raise self._error(f"{text} is not a time of day: minute {minute} is out of range 0-59")
        return _Token("time", text, (hour % 12 + (12 if m[3] == "pm" else 0), minute))

    def _error(self, detail: str) -> ScheduleError:
        return ScheduleError(f"'{self.text}': {detail}")

    def _not_exact(self, why: str) -> ScheduleError:
        return ScheduleError(f"'{self.text}' {why}")

    def _unknown(self, detail: str) -> ScheduleError:
        return ScheduleError(f"unknown schedule '{self.text}': {detail}; accepted forms: {ACCEPTED_FORMS}")

    def _peek(self, offset: int = 0) -> _Token | None:
        index = self.at + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def _word(self, offset: int = 0) -> str | None:
        token = self._peek(offset)
        return token.text if token is not None and token.kind == "word" else None

    def _accept(self, *words: str) -> bool:
        if self._word() in words:
            self.at += 1
            return True
        return False

    def _read_so_far(self) -> str:
        return " ".join(token.text for token in self.tokens[: self.at]).replace(" ,", ",")

    def _separator(self, more: Callable[[_Token], bool] | None = None) -> bool:
        """Consume ',', 'and' or ', and' (when `more` is given: only if the token after it passes)."""
        token = self._peek()
        skip = 0
        if token is not None and token.kind == "comma":
            skip = 2 if self._word(1) == "and" else 1
        elif self._word() == "and":
            skip = 1
        following = self._peek(skip)
        if not skip or (more is not None and (following is None or not more(following))):
            return False
        self.at += skip
        return True

    # -- the grammar ----------------------------------------------------------------------------------------

    def cron(self) -> str:
        if self._accept("every"):
            cron = self._every()
        elif self._accept("hourly"):
            cron = self._at_minute("0 * * * *")
        elif self._accept("daily"):
            cron = self._at_times_cron(None)
        elif (count := self._count()) is not None:
            cron = self._times_a_day(count)
        else:
            first = self.tokens[0].text
            raise self._unknown(
                f"a phrase starts with 'every', 'hourly', 'daily', 'once' or 'twice', not '{first}'"
            )
        token = self._peek()
        if token is not None:
            raise self._unknown(f"unexpected '{token.text}' after '{self._read_so_far()}'")
        return cron

    def _every(self) -> str:
        token = self._peek()
        word = self._word()
        if token is not None and (token.kind == "number" or word in _NUMBER_WORDS):
            self.at += 1
            n = token.value[0] if token.kind == "number" else _NUMBER_WORDS[token.text]
            unit = _UNIT_WORDS.get(self._word() or "")
            if unit is None:
                raise self._unknown(f"expected seconds, minutes, hours or days after 'every {token.text}'")
            self.at += 1
        elif word in _UNIT_WORDS:
            self.at += 1
            n, unit = 1, _UNIT_WORDS[word]
        elif word in _DAY_WORDS:
            days = self._days()
            return self._at_times_cron(days)
        else:
            shown = "nothing" if token is None else f"'{token.text}'"
            raise self._unknown(
                "expected a number, 'minute', 'hour', 'day', a day like 'monday', 'weekday' or 'weekend' "
                f"after 'every', not {shown}"
            )
        if unit == "day":
            if n == 1:
                return self._at_times_cron(None)
            raise self._not_exact(_days_message(n * 24))
        if unit == "week":
            why = (
                "needs a day:"
                if n == 1
                else "cannot be exact in cron, which has no week count; for weekly runs,"
            )
            raise self._not_exact(f"{why} name the day and the time, like 'every monday at 09:00'")
        cron = self._interval(n, unit)
        if unit == "hour":
            return self._at_minute(cron)
        return cron

    def _interval(self, n: int, unit: str) -> str:
        """`every N units` as cron: N must divide the next unit, or be whole next units that do."""
        whole = _WHOLE[unit]
        if n < 1:
            raise self._error(f"the number of {unit}s must be at least 1")
        if whole % n == 0:
            return _cadence_cron("*" if n == 1 else f"*/{n}", unit)
        if n < whole:
            raise self._not_exact(_uneven_message(n, unit))
        if unit == "hour":
            raise self._not_exact(_days_message(n))
        bigger = _NEXT_UNIT[unit]
        if n % whole == 0 and _WHOLE[bigger] % (n // whole) == 0:
            return self._interval(n // whole, bigger)  # every 120 seconds: every 2 minutes
        raise self._not_exact(_across_message(n, unit))

    def _at_minute(self, cron: str) -> str:
        """`... at :MM` after an hourly cadence sets the minute; without it, the minute stays 0."""
        if not self._accept("at"):
            return cron
        token = self._peek()
        if token is None or token.kind != "minute":
            shown = "nothing" if token is None else f"'{token.text}'"
            raise self._error(f"expected a minute like ':15' after 'at', not {shown}")
        self.at += 1
        return f"{token.value[0]} {cron.split(' ', 1)[1]}"

    def _days(self) -> tuple[int, ...]:
        """Day names, 'weekday' and 'weekend', separated by ',' or 'and'."""
        days: set[int] = set()
        while True:
            days.update(_DAY_WORDS[self.tokens[self.at].text])
            self.at += 1
            if not self._separator(lambda token: token.kind == "word" and token.text in _DAY_WORDS):
                return tuple(sorted(days))

    def _count(self) -> int | None:
        """'once', 'twice', '3 times', 'three times': how many times a day, or None."""
        token = self._peek()
        if token is None:
            return None
        if token.text in _COUNT_WORDS and token.kind == "word":
            self.at += 1
            return _COUNT_WORDS[token.text]
        if (token.kind == "number" or token.text in _NUMBER_WORDS) and self._word(1) == "times":
            self.at += 2
            return token.value[0] if token.kind == "number" else _NUMBER_WORDS[token.text]
        return None

    def _times_a_day(self, count: int) -> str:
        if not (self._accept("daily") or (self._accept("a", "per") and self._accept("day"))):
            raise self._unknown(f"expected 'a day' after '{self._read_so_far()}'")
        said = self._read_so_far()
        if self._word() == "at" or count == 1:
            times = self._at_times(said)
            if len(times) != count:
                raise self._error(f"{said} needs {count} different times, got {len(times)}")
            return _cron_at(self.text, times, None)
        if count < 1:
            raise self._error("the count must be at least 1")
        if 24 % count:
            raise self._not_exact(
                f"cannot be evenly spaced in whole hours (24 is not a multiple of {count}); list the {count} "
                "times after 'at'"
            )
        # Evenly spaced from midnight, at fixed local times: cron's '0 0,12 * * *' rather than '0 */12 * * *'.
        return f"0 {_cron_list(range(0, 24, 24 // count))} * * *"

    def _at_times(self, said: str) -> list[tuple[int, int]]:
        """'at' and one or more times of day, separated by ',' or 'and': their (hour, minute)s, sorted."""
        if not self._accept("at"):
            token = self._peek()
            if token is not None and token.kind == "time":
                raise self._error(f"write 'at' before the time: '{said} at {token.text}'")
            alias = " (@daily is 00:00)" if said in ("daily", "every day") else ""
            raise self._not_exact(f"needs a time: add 'at' and a time, like '{said} at 09:00'{alias}")
        times: set[tuple[int, int]] = set()
        while True:
            token = self._peek()
            if token is None or token.kind != "time":
                shown = "nothing" if token is None else f"'{token.text}'"
                raise self._error(
                    f"expected a time of day after '{self._read_so_far()}', not {shown}: {_TIME_FORMS}"
                )
            times.add((token.value[0], token.value[1]))
            self.at += 1
            if not self._separator():
                return sorted(times)

    def _at_times_cron(self, days: tuple[int, ...] | None) -> str:
        return _cron_at(self.text, self._at_times(self._read_so_far()), days)


def _cron_at(text: str, times: Sequence[tuple[int, int]], days: Sequence[int] | None) -> str:
    """The cron expression that runs at exactly `times` (hour, minute) on the cron weekdays `days` (None:
    every day). Cron runs at each of its minutes in each of its hours: times that are not every such pair
    are an error naming the times that cron would add."""
    hours = sorted({h for h, _ in times})
    minutes = sorted({m for _, m in times})
    extra = sorted({(h, m) for h in hours for m in minutes} - set(times))
    if extra:
        listed = _and([f"{h:02d}:{m:02d}" for h, m in times])
        shown = _and([f"{h:02d}:{m:02d}" for h, m in extra])
        raise ScheduleError(
            f"'{text}': {listed} cannot be one cron expression: cron runs at each of its minutes in each of "
            f"its hours, so it would also run at {shown}; use one task per time, or times that share their "
            "minutes"
        )
    dow = "*" if days is None or len(days) == 7 else _cron_list(days)
    return f"{_cron_list(minutes)} {_cron_list(hours)} * * {dow}"


def _cron_list(values: Sequence[int]) -> str:
    """Cron's list form: [1, 2, 3, 4, 5] -> '1-5', [0, 6] -> '0,6'."""
    return ",".join(_runs([str(v) for v in values], list(values)))


def _cadence_cron(step: str, unit: str) -> str:
    """The cron expression with `step` ('*/5') in the field of `unit`, and the fields below it at 0."""
    return {"second": f"{step} * * * * *", "minute": f"{step} * * * *", "hour": f"0 {step} * * *"}[unit]


def _divisors(whole: int) -> list[int]:
    return [d for d in range(1, whole + 1) if whole % d == 0]


def _every_phrase(n: int, unit: str) -> str:
    """How a cadence is written as a phrase, quoted: 'every 5 minutes', 'every hour', 'daily at 00:00'."""
    if n == _WHOLE.get(unit):
        return "'daily at 00:00'" if unit == "hour" else f"'every {_NEXT_UNIT[unit]}'"
    return f"'every {unit}'" if n == 1 else f"'every {n} {unit}s'"


def _nearest(n: int, cadences: Sequence[tuple[int, str]]) -> str:
    """The nearest exact cadences below and above `n`, as phrases: 'every 5 minutes' or 'every 10 minutes'."""
    below = [c for c in cadences if c[0] < n]
    above = [c for c in cadences if c[0] > n]
    picks = ([below[-1]] if below else []) + ([above[0]] if above else [])
    return " or ".join(phrase for _, phrase in picks)


def _uneven_message(n: int, unit: str) -> str:
    """Why `every N units` with N not dividing the next unit is not exact in cron, and what comes nearest."""
    whole = _WHOLE[unit]
    values = list(range(0, whole, n))
    gap = whole - values[-1]

    def at(value: int) -> str:
        return f"{value:02d}:00" if unit == "hour" else f":{value:02d}"

    shown = ("…, " if len(values) > 2 else "") + ", ".join(at(v) for v in values[-2:])
    cron = _cadence_cron(f"*/{n}", unit)
    cadences = [(d, _every_phrase(d, unit)) for d in _divisors(whole)]
    return (
        f"cannot be exact in cron: {whole} is not a multiple of {n}, so */{n} starts again at {at(0)} every "
        f"{_NEXT_UNIT[unit]} ({shown}, then {at(0)}: {_a(gap)} {gap}-{unit} gap); "
        f'use {_nearest(n, cadences)}, or write "{cron}" if that gap is fine'
    )


def _across_message(n: int, unit: str) -> str:
    """Why `every N units`, N longer than the next unit and not whole ones, is not one cron expression."""
    bigger = _NEXT_UNIT[unit]
    whole, wholes = _WHOLE[unit], _WHOLE[bigger]
    span = whole * wholes  # a minute field and an hour field repeat each day (seconds and minutes: each hour)
    if span % n == 0:
        fires = range(0, span, n)
        crons = []
        for low in sorted({t % whole for t in fires}):
            highs = [t // whole for t in fires if t % whole == low]
            step = highs[1] - highs[0] if len(highs) > 1 else wholes
            field = f"*/{step}" if highs[0] == 0 else f"{highs[0]}-{highs[-1]}/{step}"
            crons.append(f"{low} {field} * * *" + (" *" if unit == "second" else ""))
        zero = "00:00" if unit == "minute" else ":00"
        exact = (
            f"exactly every {n} {unit}s from {zero} takes {len(crons)} tasks, one per schedule: "
            + _and([f'"{cron}"' for cron in crons])
            if len(crons) <= 4
            else f"exactly every {n} {unit}s takes {len(crons)} cron expressions, one task each"
        )
    else:
        period = "a day" if unit == "minute" else "an hour"
        exact = (
            f"{n} {unit}s does not divide {period} either, so no set of cron expressions repeats it exactly"
        )
    cadences = [(d, _every_phrase(d, unit)) for d in _divisors(whole)] + [
        (d * whole, _every_phrase(d, bigger)) for d in _divisors(wholes) if d > 1
    ]
    return (
        f"cannot be one cron expression: cron's {unit} field starts again every {bigger}, so a cadence "
        f"longer than a{'n' if bigger == 'hour' else ''} {bigger} must be whole {bigger}s; {exact}; "
        f"or use {_nearest(n, cadences)}"
    )


def _days_message(hours: int) -> str:
    """Why a cadence of more than a day (or of hours not dividing one) is not exact in cron."""
    hint = ""
    if hours % 24 == 0:
        days = hours // 24
        hint = (
            f', or write "0 0 */{days} * *" if starting again on the 1st of each month is fine (it runs on '
            f"days 1, {1 + days}, {1 + 2 * days}, … of each month, so the gap at a month's end varies)"
        )
    return (
        f"cannot be exact in cron: its hour field starts again every day and its day-of-month field "
        f"every month; use 'every 12 hours' or 'daily at 00:00'{hint}"
    )


def _a(n: int) -> str:
    """The article before a number: 'a 4-minute gap', 'an 11-hour gap'."""
    return "an" if str(n).startswith("8") or n in (11, 18) else "a"


def _and(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _expand(text: str, cron6: str, raw: Sequence[str], name: str) -> _Fields:
    if _UNSUPPORTED_RE.search(cron6) or not _EXPRESSION_RE.match(cron6):
        for label, part in zip(_FIELD_NAMES, raw, strict=True):
            if _UNSUPPORTED_RE.search(part):
                raise ScheduleError(f"'{text}': {label} field '{part}': L, W, #, ? and R are not supported")
            if not _FIELD_RE.match(part):
                raise ScheduleError(f"'{text}': bad {label} field '{part}'")
    # H hashes the task's name; without H the name does not matter, so equal expressions share one expansion.
    key_name = name if _HASH_RE.search(cron6) else ""
    try:
        return _fields(cron6, key_name)
    except ScheduleError as exc:
        raise ScheduleError(f"'{text}': {exc}") from None


@functools.lru_cache(maxsize=65536)
def _fields(cron6: str, name: str) -> _Fields:
    """The expression as bitmasks; tasks with equal expressions share one (it is immutable).

    Plain fields (numbers, names, ranges, lists, steps) are read here, which is ten times faster than
    croniter and keeps a 100,000-task file quick to load; anything else (H) is croniter's. The tests
    check that both readings agree on every form.
    """
    raw = cron6.split()
    masks = [_plain_field(part, index) for index, part in enumerate(raw)]
    if any(mask is None for mask in masks):
        masks = list(_croniter_masks(cron6, name))
    seconds, minutes, hours, days, months, weekdays = (int(m or 0) for m in masks)
    fields = _Fields(seconds, minutes, hours, days, months, weekdays, raw[3][0] == "*" or raw[5][0] == "*")
    if (
        not _surely_fires(fields)
        and fields.next_match(_Y2K, _Y2K.replace(year=2000 + _HORIZON_YEARS)) is None
    ):
        raise ScheduleError("never fires (no date matches it)")
    return fields


def _surely_fires(f: _Fields) -> bool:
    """Whether some date matches, decided without a search in the common cases."""
    if not f.days_and or f.days == _ALL_DAYS:
        return True  # a weekday alone can match, and every weekday comes round in every month
    if f.weekdays == _ALL_WEEKDAYS:  # the day of the month alone decides: it must exist (Feb 29 counts)
        return any(f.months >> m & 1 and f.days & ((1 << (_MONTH_DAYS[m] + 1)) - 1) for m in range(1, 13))
    return False  # both day fields restricted and both required: search


_NAMES = {
    4: {name[:3].lower(): i + 1 for i, name in enumerate(_MONTH_NAMES)},
    5: {name[:3].lower(): i for i, name in enumerate(_DAY_NAMES)},
}


@functools.lru_cache(maxsize=16384)
def _plain_field(part: str, index: int) -> int | None:
    """A field without H as a bitmask, or None to leave it to croniter (which also words the errors)."""
    lo, hi = _FIELD_RANGES[index]
    top = 7 if index == 5 else hi  # 7 is Sunday too
    mask = 0
    for item in part.split(","):
        base, slash, step_text = item.partition("/")
        step = int(step_text) if step_text.isdigit() else 0 if slash else 1
        if step < 1:
            return None
        if base == "*":
            first, last = lo, hi
        else:
            start_text, dash, end_text = base.partition("-")
            first_value = _field_value(start_text, index)
            last_value = _field_value(end_text, index) if dash else (hi if slash else first_value)
            if first_value is None or last_value is None:
                return None
            first, last = first_value, last_value
        if not lo <= first <= last <= top:
            return None
        for value in range(first, last + 1, step):
            mask |= 1 << (value % 7 if index == 5 else value)
    return mask


def _field_value(text: str, index: int) -> int | None:
    if text.isdigit():
        return int(text)
    return _NAMES.get(index, {}).get(text.lower())


def _croniter_masks(cron6: str, name: str) -> tuple[int, ...]:
    from croniter import CroniterError, croniter  # imported on first need: most files never need it

    try:
        expanded, _nth = croniter.expand(cron6, hash_id=name.encode(), second_at_beginning=True)
    except (CroniterError, ValueError):
        raise ScheduleError(_which_field(cron6.split(), name)) from None
    # croniter returns minute, hour, day, month, weekday, then second.
    order = (5, 0, 1, 2, 3, 4)
    masks = []
    for index, i in enumerate(order):
        mask = 0
        for value in _values(expanded[i], index):
            mask |= 1 << value
        masks.append(mask)
    return tuple(masks)


def _which_field(raw: Sequence[str], name: str) -> str:
    """Name the field croniter rejected, by expanding each field alone."""
    from croniter import CroniterError, croniter

    for index, part in enumerate(raw):
        probe = ["*"] * 6
        probe[index] = part
        try:
            croniter.expand(" ".join(probe), hash_id=name.encode(), second_at_beginning=True)
        except (CroniterError, ValueError):
            lo, hi = _FIELD_RANGES[index]
            extra = (
                ", or names like JAN"
                if index == 4
                else ", 7 is Sunday too, or names like MON"
                if index == 5
                else ""
            )
            return f"bad {_FIELD_NAMES[index]} field '{part}' (values {lo}-{hi}{extra})"
    return "not a valid cron expression"


def _values(items: Sequence[object], index: int) -> tuple[int, ...]:
    lo, hi = _FIELD_RANGES[index]
    if "*" in items:
        return tuple(range(lo, hi + 1))
    values = sorted({int(str(v)) % 7 if index == 5 else int(str(v)) for v in items})
    bad = [v for v in values if not lo <= v <= hi]
    if bad:
        raise ScheduleError(f"{_FIELD_NAMES[index]} value {bad[0]} is out of range {lo}-{hi}")
    return tuple(values)


# Plain-words description, for `scheduler list`.


def _describe(f: _Fields, cron: str) -> str:
    parts = [_describe_time(f, cron.split()[-4])]
    days = _describe_days(f)
    if days:
        parts.append(days)
    months = _bits(f.months)
    if len(months) < 12:
        parts.append("in " + _join(months, _MONTH_NAMES, 1))
    return " ".join(parts)


def _step(values: Sequence[int], size: int) -> int | None:
    """N when `values` is 0, N, 2N, ... to the end of the field (N need not divide `size`)."""
    if len(values) < 2 or values[0] != 0:
        return None
    n = values[1]
    return n if list(values) == list(range(0, size, n)) else None


def _restart(n: int, size: int, zero: str, unit: str) -> str:
    """For a step that does not divide its field (*/7 minutes): where the cadence starts again."""
    return "" if size % n == 0 else f", starting again at {zero} every {unit}"


def _describe_time(f: _Fields, hour_field: str) -> str:
    secs, mins, hours = _bits(f.seconds), _bits(f.minutes), _bits(f.hours)
    all_mins, all_hours = len(mins) == 60, len(hours) == 24
    if all_mins and all_hours and len(secs) > 1:
        n = _step(secs, 60)
        if n:
            return "every second" if n == 1 else f"every {n} seconds" + _restart(n, 60, ":00", "minute")
        return f"at second {_numbers(secs)}"
    if secs == (0,) and all_hours and (all_mins or _step(mins, 60) or len(mins) == 1):
        if all_mins:
            return "every minute"
        n = _step(mins, 60)
        return f"every {n} minutes" + _restart(n, 60, ":00", "hour") if n else f"every hour at :{mins[0]:02d}"
    # A cadence of hours ('*/2') reads as one; a few fixed times ('0,12', twice a day) are listed.
    n = _step(hours, 24) if secs == (0,) and len(mins) == 1 else None
    if n and (hour_field.startswith("*") or len(hours) > 6):
        at = f" at :{mins[0]:02d}" if mins[0] else ""
        return f"every {n} hours{at}" + _restart(n, 24, "00:00", "day")
    if len(secs) == 1 and len(mins) * len(hours) <= 6:
        suffix = f":{secs[0]:02d}" if secs[0] else ""
        return "at " + _and([f"{h:02d}:{m:02d}{suffix}" for h in hours for m in mins])
    out = [] if secs == (0,) else [f"at second {_numbers(secs)}"]
    n = _step(mins, 60)
    out.append("every minute" if all_mins else f"every {n} minutes" if n else f"at minute {_numbers(mins)}")
    out.append("of every hour" if all_hours else f"past hour {_numbers(hours)}")
    return " ".join(out)


def _describe_days(f: _Fields) -> str:
    days, weekdays = _bits(f.days), _bits(f.weekdays)
    all_days, all_weekdays = len(days) == 31, len(weekdays) == 7
    dom = "on day " + _numbers(days) + " of the month" if not all_days else ""
    # Monday first, as people list them: a weekend is 'Saturday and Sunday'.
    monday_first = sorted((v + 6) % 7 for v in weekdays)
    names = [_DAY_NAMES[(k + 1) % 7] for k in monday_first]
    dow = "on " + _and(_runs(names, monday_first, " through ")) if not all_weekdays else ""
    if dom and dow:
        return f"{dom} {'and' if f.days_and else 'or'} {dow}"
    return dom or dow


def _numbers(values: Sequence[int]) -> str:
    return ", ".join(_runs([str(v) for v in values], list(values)))


def _join(values: Sequence[int], names: Sequence[str], base: int) -> str:
    return _and(_runs([names[v - base] for v in values], list(values), " through "))


def _runs(labels: list[str], values: list[int], dash: str = "-") -> list[str]:
    """Collapse consecutive values into ranges: [1,2,3,5] -> ['1-3', '5']."""
    out: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(labels[i] if j - i < 2 else f"{labels[i]}{dash}{labels[j]}")
        if j - i == 1:
            out.append(labels[j])
        i = j + 1
    return out
