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
import functools
import re
from collections.abc import Sequence
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
    "cron with 5 fields 'MIN HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK' (e.g. '0 9 * * MON-FRI'), "
    "6 fields with seconds first (e.g. '*/10 * * * * *'), "
    "@yearly @annually @monthly @weekly @daily @midnight @hourly, "
    "'every N seconds', 'every N minutes' (N divides 60), 'every hour', 'every N hours' (N divides 24), "
    "'hourly at :MM', 'every hour at :MM', 'daily at HH:MM', 'every day at HH:MM'; "
    "'H' in a field picks a value hashed from the task's name"
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


def _to_cron(text: str) -> str:
    """Phrases and aliases to a cron expression; cron passes through, whitespace normalized."""
    words = " ".join(text.split())
    lower = words.lower()
    if lower.startswith("@"):
        if lower not in _ALIASES:
            raise ScheduleError(f"unknown alias '{words}'; accepted forms: {ACCEPTED_FORMS}")
        return _ALIASES[lower]
    # A cron expression's first field (seconds or minutes) is numeric, '*' or H; a word starts a phrase.
    if re.match(r"^[a-z]", lower) and not re.match(r"^h(?![a-z])", lower):
        return _phrase_to_cron(words, lower)
    return words


def _phrase_to_cron(words: str, lower: str) -> str:
    if m := re.fullmatch(r"every (?:(\d+) seconds?|second)", lower):
        n = int(m.group(1) or 1)
        _check_divides(words, n, 60, "seconds")
        return "* * * * * *" if n == 1 else f"*/{n} * * * * *"
    if m := re.fullmatch(r"every (?:(\d+) minutes?|minute)", lower):
        n = int(m.group(1) or 1)
        _check_divides(words, n, 60, "minutes")
        return "* * * * *" if n == 1 else f"*/{n} * * * *"
    if m := re.fullmatch(r"every (?:(\d+) hours?|hour)", lower):
        n = int(m.group(1) or 1)
        _check_divides(words, n, 24, "hours")
        return "0 * * * *" if n == 1 else f"0 */{n} * * *"
    if m := re.fullmatch(r"(?:hourly|every hour) at :(\d{1,2})", lower):
        minute = int(m.group(1))
        if minute > 59:
            raise ScheduleError(f"'{words}': minute {minute} is out of range 0-59")
        return f"{minute} * * * *"
    if m := re.fullmatch(r"(?:daily|every day) at (\d{1,2}):(\d{2})", lower):
        hour, minute = int(m.group(1)), int(m.group(2))
        if hour > 23 or minute > 59:
            raise ScheduleError(f"'{words}': {hour:02d}:{minute:02d} is not a time of day (00:00-23:59)")
        return f"{minute} {hour} * * *"
    raise ScheduleError(f"unknown schedule '{words}'; accepted forms: {ACCEPTED_FORMS}")


def _check_divides(words: str, n: int, whole: int, unit: str) -> None:
    if n < 1 or whole % n:
        divisors = ", ".join(str(d) for d in range(1, whole + 1) if whole % d == 0)
        raise ScheduleError(f"'{words}': N must divide {whole} so the cadence stays even ({divisors} {unit})")


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
    parts = [_describe_time(f)]
    days = _describe_days(f)
    if days:
        parts.append(days)
    months = _bits(f.months)
    if len(months) < 12:
        parts.append("in " + _join(months, _MONTH_NAMES, 1))
    return " ".join(parts)


def _step(values: Sequence[int], size: int) -> int | None:
    """N when `values` is 0, N, 2N, ... covering the whole field."""
    if len(values) < 2 or values[0] != 0:
        return None
    n = values[1]
    return n if list(values) == list(range(0, size, n)) else None


def _describe_time(f: _Fields) -> str:
    secs, mins, hours = _bits(f.seconds), _bits(f.minutes), _bits(f.hours)
    all_mins, all_hours = len(mins) == 60, len(hours) == 24
    if all_mins and all_hours and len(secs) > 1:
        n = _step(secs, 60)
        return "every second" if n == 1 else f"every {n} seconds" if n else f"at second {_numbers(secs)}"
    if secs == (0,) and all_hours and (all_mins or _step(mins, 60) or len(mins) == 1):
        n = _step(mins, 60)
        return "every minute" if all_mins else f"every {n} minutes" if n else f"every hour at :{mins[0]:02d}"
    if secs == (0,) and mins == (0,) and (n := _step(hours, 24)):
        return f"every {n} hours"
    if len(secs) == 1 and len(mins) == 1 and len(hours) <= 4:
        suffix = f":{secs[0]:02d}" if secs[0] else ""
        return "at " + ", ".join(f"{h:02d}:{mins[0]:02d}{suffix}" for h in hours)
    out = [] if secs == (0,) else [f"at second {_numbers(secs)}"]
    n = _step(mins, 60)
    out.append("every minute" if all_mins else f"every {n} minutes" if n else f"at minute {_numbers(mins)}")
    out.append("of every hour" if all_hours else f"past hour {_numbers(hours)}")
    return " ".join(out)


def _describe_days(f: _Fields) -> str:
    days, weekdays = _bits(f.days), _bits(f.weekdays)
    all_days, all_weekdays = len(days) == 31, len(weekdays) == 7
    dom = "on day " + _numbers(days) + " of the month" if not all_days else ""
    dow = "on " + _join(weekdays, _DAY_NAMES, 0) if not all_weekdays else ""
    if dom and dow:
        return f"{dom} {'and' if f.days_and else 'or'} {dow}"
    return dom or dow


def _numbers(values: Sequence[int]) -> str:
    return ", ".join(_runs([str(v) for v in values], list(values)))


def _join(values: Sequence[int], names: Sequence[str], base: int) -> str:
    return ", ".join(_runs([names[v - base] for v in values], list(values), " through "))


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
