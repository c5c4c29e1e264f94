"""Tests for scheduler.schedule: the grammar, the next-fire search and Debian cron's DST rules."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim

from scheduler.errors import ScheduleError
from scheduler.schedule import parse

UTC_ZONE = ZoneInfo("UTC")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def fires(expr: str, after: datetime, count: int, zone: ZoneInfo = UTC_ZONE, name: str = "t") -> list[str]:
    return [f.at.isoformat() for f in parse(expr, name=name, zone=zone).fires(after, count)]


class TestGrammar:
    def test_five_fields(self) -> None:
        """Plain cron fires at the matching minutes."""
        assert ["2026-01-05T09:00:00+00:00", "2026-01-06T09:00:00+00:00"] == fires(
            "0 9 * * MON-FRI", utc(2026, 1, 3), 2
        )

    def test_six_fields_seconds_first(self) -> None:
        """Six fields put seconds first, as Quartz and supercronic do."""
        assert ["2026-01-01T00:00:10+00:00", "2026-01-01T00:00:20+00:00"] == fires(
            "*/10 * * * * *", utc(2026, 1, 1), 2
        )

    def test_strictly_after(self) -> None:
        """A fire at exactly `after` is not returned; microseconds round up."""
        assert ["2026-01-01T00:00:01+00:00"] == fires("* * * * * *", utc(2026, 1, 1), 1)
        after = utc(2026, 1, 1).replace(microsecond=1)
        assert ["2026-01-01T00:00:01+00:00"] == fires("* * * * * *", after, 1)

    @pytest.mark.parametrize(
        ("alias", "cron"),
        [
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@hourly", "0 * * * *"),
            ("@DAILY", "0 0 * * *"),
        ],
    )
    def test_aliases(self, alias: str, cron: str) -> None:
        """@aliases fire as their cron equivalents."""
        start = utc(2026, 2, 3, 4, 5)
        assert fires(cron, start, 3) == fires(alias, start, 3)

    @pytest.mark.parametrize(
        ("phrase", "cron"),
        [
            ("every 10 seconds", "*/10 * * * * *"),
            ("every second", "* * * * * *"),
            ("every 1 seconds", "* * * * * *"),
            ("every 5 minutes", "*/5 * * * *"),
            ("every minute", "* * * * *"),
            ("every 30 minutes", "*/30 * * * *"),
            ("every hour", "0 * * * *"),
            ("every 6 hours", "0 */6 * * *"),
            ("hourly at :15", "15 * * * *"),
            ("every hour at :05", "5 * * * *"),
            ("daily at 09:30", "30 9 * * *"),
            ("every day at 7:05", "5 7 * * *"),
            ("Every  Day  At 23:59", "59 23 * * *"),
        ],
    )
    def test_phrases(self, phrase: str, cron: str) -> None:
        """Heroku-style phrases fire as their cron equivalents."""
        start = utc(2026, 2, 3, 4, 5, 6)
        assert fires(cron, start, 4) == fires(phrase, start, 4)

    def test_names_and_ranges(self) -> None:
        """Month and day names, lists and steps combine."""
        got = fires("0 12 1,15 JAN-MAR *", utc(2026, 1, 10), 4)
        assert [
            "2026-01-15T12:00:00+00:00",
            "2026-02-01T12:00:00+00:00",
            "2026-02-15T12:00:00+00:00",
            "2026-03-01T12:00:00+00:00",
        ] == got

    def test_sunday_is_zero_and_seven(self) -> None:
        """Day-of-week 7 is Sunday, like 0."""
        assert fires("0 0 * * 0", utc(2026, 1, 1), 3) == fires("0 0 * * 7", utc(2026, 1, 1), 3)

    def test_day_or_when_both_restricted(self) -> None:
        """Vixie cron: with both day fields restricted, either may match."""
        # 2026-01-01 is a Thursday; day 13 or any Monday.
        got = fires("0 0 13 * MON", utc(2026, 1, 1), 3)
        assert ["2026-01-05T00:00:00+00:00", "2026-01-12T00:00:00+00:00", "2026-01-13T00:00:00+00:00"] == got

    def test_day_and_when_one_starts_with_star(self) -> None:
        """Vixie cron: a day field starting with '*' makes both fields required."""
        # Odd days (1, 3, ...) that are also Mondays: Jan 5, Jan 19, Feb 9.
        got = fires("0 0 */2 * MON", utc(2026, 1, 1), 3)
        assert ["2026-01-05T00:00:00+00:00", "2026-01-19T00:00:00+00:00", "2026-02-09T00:00:00+00:00"] == got

    def test_leap_day(self) -> None:
        """Feb 29 fires only in leap years."""
        assert ["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"] == fires(
            "0 0 29 2 *", utc(2026, 1, 1), 2
        )


class TestHash:
    def test_same_name_same_instant(self) -> None:
        """H is stable for a name across parses."""
        assert fires("H H * * *", utc(2026, 1, 1), 2, name="send-digest") == fires(
            "H H * * *", utc(2026, 1, 1), 2, name="send-digest"
        )

    def test_names_spread(self) -> None:
        """Many task names pick many different minutes."""
        minutes = {
            parse("H * * * *", name=f"task-{i}", zone=UTC_ZONE).next_fire(utc(2026, 1, 1)).at.minute
            for i in range(100)
        }
        assert len(minutes) > 30

    def test_hash_with_step_and_range(self) -> None:
        """H/15 keeps a 15-minute cadence at a hashed offset; H(0-9) stays in its range."""
        at = [datetime.fromisoformat(s) for s in fires("H/15 * * * *", utc(2026, 1, 1), 4, name="feed")]
        assert {timedelta(minutes=15)} == {b - a for a, b in itertools.pairwise(at)}
        first = parse("H(0-9) 0 * * *", name="feed", zone=UTC_ZONE).next_fire(utc(2026, 1, 1)).at
        assert 0 <= first.minute <= 9


class TestErrors:
    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("", "empty schedule"),
            ("0 0 30 2 *", "never fires"),
            ("* * *", "has 3 fields; expected 5"),
            ("1 2 3 4 5 6 7", "has 7 fields"),
            ("61 * * * *", "bad minute field '61' \\(values 0-59\\)"),
            ("0 24 * * *", "bad hour field '24'"),
            ("0 0 32 * *", "bad day-of-month field '32'"),
            ("0 0 * FOO *", "bad month field 'FOO'"),
            ("0 0 * * 8", "bad day-of-week field '8'"),
            ("*/0 * * * *", "bad minute field"),
            ("0 0 L * *", "L, W, #, \\? and R are not supported"),
            ("0 R * * *", "not supported"),
            ("0 0 * * 5#2", "not supported"),
            ("every 7 minutes", "60 is not a multiple of 7"),
            ("every 5 hours", "24 is not a multiple of 5"),
            ("every 0 seconds", "must be at least 1"),
            ("daily at 25:00", "not a time of day"),
            ("hourly at :75", "out of range"),
            ("every fortnight", "unknown word 'fortnight' in schedule 'every fortnight'; accepted forms: "),
            ("@often", "unknown alias '@often'"),
        ],
    )
    def test_bad_schedules(self, text: str, message: str) -> None:
        """Each bad schedule gets an error naming the value."""
        with pytest.raises(ScheduleError, match=message):
            parse(text, name="x", zone=UTC_ZONE)


class TestPhrases:
    @pytest.mark.parametrize(
        ("phrase", "cron"),
        [
            ("every weekday at 09:00", "0 9 * * 1-5"),
            ("every weekend at 10:30", "30 10 * * 0,6"),
            ("every monday at 9am", "0 9 * * 1"),
            ("every Monday and Thursday at 9am", "0 9 * * 1,4"),
            ("every mondays and thursdays at 9am", "0 9 * * 1,4"),
            ("every mon, wed, and fri at 9am and 5pm", "0 9,17 * * 1,3,5"),
            ("every weekday and saturday at 8am", "0 8 * * 1-6"),
            ("every sunday at midnight", "0 0 * * 0"),
            ("daily at 9am", "0 9 * * *"),
            ("daily at 9:30pm", "30 21 * * *"),
            ("daily at 9 am", "0 9 * * *"),
            ("daily at 9:30 PM", "30 21 * * *"),
            ("daily at noon", "0 12 * * *"),
            ("every day at 18:45", "45 18 * * *"),
            ("every 1 day at 7am", "0 7 * * *"),
            ("daily at 9:00, 9:30, 17:00 and 17:30", "0,30 9,17 * * *"),
            ("hourly", "0 * * * *"),
            ("hourly at :15", "15 * * * *"),
            ("every hour at :45", "45 * * * *"),
            ("every 2 hours at :30", "30 */2 * * *"),
            ("every two hours", "0 */2 * * *"),
            ("twice a day at 9am and 9pm", "0 9,21 * * *"),
            ("twice daily at 09:00 and 21:00", "0 9,21 * * *"),
            ("twice per day at noon and midnight", "0 0,12 * * *"),
            ("twice a day", "0 0,12 * * *"),
            ("3 times a day", "0 0,8,16 * * *"),
            ("four times a day", "0 0,6,12,18 * * *"),
            ("three times a day at 8am, 1pm and 6pm", "0 8,13,18 * * *"),
            ("once a day at 7:15", "15 7 * * *"),
            ("every 15 minutes", "*/15 * * * *"),
            ("every 2 hours", "0 */2 * * *"),
            ("every 120 minutes", "0 */2 * * *"),
            ("every 120 seconds", "*/2 * * * *"),
        ],
    )
    def test_cron(self, phrase: str, cron: str) -> None:
        """Each phrase maps to exactly one cron expression."""
        assert cron == parse(phrase, name="x", zone=UTC_ZONE).cron

    @pytest.mark.parametrize(
        ("time", "hour", "minute"),
        [
            ("12am", 0, 0),
            ("12:30am", 0, 30),
            ("1am", 1, 0),
            ("11:59am", 11, 59),
            ("12pm", 12, 0),
            ("12:15pm", 12, 15),
            ("1pm", 13, 0),
            ("11pm", 23, 0),
            ("midnight", 0, 0),
            ("noon", 12, 0),
        ],
    )
    def test_twelve_hour_times(self, time: str, hour: int, minute: int) -> None:
        """12am is midnight and 12pm is noon; the other hours add 12 after noon."""
        assert f"{minute} {hour} * * *" == parse(f"daily at {time}", name="x", zone=UTC_ZONE).cron

    @pytest.mark.parametrize(
        ("phrase", "message"),
        [
            (
                "daily at 13pm",
                r"13pm is not a time of day: with am or pm the hour goes from 1 to 12 .*write 13:00",
            ),
            ("daily at 0am", r"0am is not a time of day: .*write 00:00"),
            ("daily at 9:60pm", r"minute 60 is out of range"),
            ("daily at 24:00", r"24:00 is not a time of day \(00:00-23:59\)"),
            ("daily at 9", r"expected a time of day after 'daily at', not '9': write 09:00, 21:30, 9am"),
            ("every weekday 9am", r"write 'at' before the time: 'every weekday at 9am'"),
            ("hourly at 15", r"expected a minute like ':15' after 'at', not '15'"),
            ("every 2 hours at 9am", r"expected a minute like ':15' after 'at', not '9am'"),
        ],
    )
    def test_bad_times(self, phrase: str, message: str) -> None:
        """A time that is no time of day, or in the wrong place, is named."""
        with pytest.raises(ScheduleError, match=message):
            parse(phrase, name="x", zone=UTC_ZONE)

    @pytest.mark.parametrize(
        "phrase", ["daily", "every day", "every weekday", "every monday and friday", "once a day"]
    )
    def test_day_needs_a_time(self, phrase: str) -> None:
        """A day without a time is an error asking for one, not a silent midnight."""
        with pytest.raises(
            ScheduleError, match=rf"^'{phrase}' needs a time: add 'at' and a time, like '{phrase} at 09:00'"
        ):
            parse(phrase, name="x", zone=UTC_ZONE)

    def test_every_seven_minutes(self) -> None:
        """A step that does not divide the hour: why (the restart and its gap), the nearest even steps, and
        the cron expression to write if the gap is fine."""
        with pytest.raises(ScheduleError) as info:
            parse("every 7 minutes", name="x", zone=UTC_ZONE)
        assert (
            "'every 7 minutes' cannot be exact in cron: 60 is not a multiple of 7, so */7 starts again at "
            ":00 every hour (…, :49, :56, then :00: a 4-minute gap); use 'every 6 minutes' or 'every 10 "
            'minutes\', or write "*/7 * * * *" if that gap is fine'
        ) == str(info.value)

    @pytest.mark.parametrize(
        ("phrase", "parts"),
        [
            (
                "every 5 hours",
                [
                    "24 is not a multiple of 5",
                    "(…, 15:00, 20:00, then 00:00: a 4-hour gap)",
                    "'every 4 hours' or 'every 6 hours'",
                    '"0 */5 * * *"',
                ],
            ),
            (
                "every 13 hours",
                ["(00:00, 13:00, then 00:00: an 11-hour gap)", "'every 12 hours' or 'daily at 00:00'"],
            ),
            (
                "every 45 seconds",
                [
                    "60 is not a multiple of 45",
                    "(:00, :45, then :00: a 15-second gap)",
                    "'every 30 seconds' or 'every minute'",
                    '"*/45 * * * * *"',
                ],
            ),
            (
                "every 90 minutes",
                [
                    "cron's minute field starts again every hour",
                    "takes 2 tasks, one per schedule",
                    '"0 */3 * * *" and "30 1-22/3 * * *"',
                    "'every hour' or 'every 2 hours'",
                ],
            ),
            (
                "every 90 seconds",
                ['"0 */3 * * * *" and "30 1-58/3 * * * *"', "'every minute' or 'every 2 minutes'"],
            ),
            ("every 100 minutes", ["100 minutes does not divide a day either"]),
            (
                "every 2 days",
                ["its day-of-month field every month", '"0 0 */2 * *"', "days 1, 3, 5, … of each month"],
            ),
            ("every 36 hours", ["'every 12 hours' or 'daily at 00:00'"]),
            ("every 2 weeks", ["cannot be exact in cron", "'every monday at 09:00'"]),
            ("5 times a day", ["24 is not a multiple of 5", "list the 5 times after 'at'"]),
        ],
    )
    def test_not_exact(self, phrase: str, parts: list[str]) -> None:
        """A cadence cron cannot keep exactly is an error saying why and what comes nearest."""
        with pytest.raises(ScheduleError) as info:
            parse(phrase, name="x", zone=UTC_ZONE)
        for part in parts:
            assert part in str(info.value)

    def test_ninety_minutes_as_two_tasks(self) -> None:
        """The two schedules suggested for every 90 minutes together fire exactly every 90 minutes."""
        start = utc(2026, 1, 1) - timedelta(seconds=1)
        both = sorted(fires("0 */3 * * *", start, 8) + fires("30 1-22/3 * * *", start, 8))
        at = [datetime.fromisoformat(s) for s in both]
        assert {timedelta(minutes=90)} == {b - a for a, b in itertools.pairwise(at)}

    def test_times_cron_cannot_combine(self) -> None:
        """Times whose hours and minutes cron would cross are an error naming the extra times."""
        with pytest.raises(
            ScheduleError,
            match=r"^'twice a day at 9:15 and 17:30': 09:15 and 17:30 cannot be one cron expression: .* "
            r"would also run at 09:30 and 17:15; use one task per time",
        ):
            parse("twice a day at 9:15 and 17:30", name="x", zone=UTC_ZONE)

    def test_count_of_times(self) -> None:
        """'twice a day at ...' needs two different times."""
        with pytest.raises(ScheduleError, match=r"twice a day needs 2 different times, got 3"):
            parse("twice a day at 9am, 1pm and 9pm", name="x", zone=UTC_ZONE)
        with pytest.raises(ScheduleError, match=r"twice a day needs 2 different times, got 1"):
            parse("twice a day at 9am and 9am", name="x", zone=UTC_ZONE)

    @pytest.mark.parametrize(
        ("phrase", "message"),
        [
            (
                "every wekday at 9am",
                r"^unknown word 'wekday' in schedule 'every wekday at 9am' \(did you mean 'weekday'\?\)",
            ),
            (
                "every day at 9:00 run",
                r"^unknown word 'run' in schedule 'every day at 9:00 run'; accepted forms:",
            ),
            ("every other day", r"^unknown word 'other'"),
            ("at 9am every day", r"^unknown schedule 'at 9am every day': a phrase starts with 'every'"),
            ("every 15 minutes at :05", r"unexpected 'at' after 'every 15 minutes'"),
            ("every 2 fortnights", r"^unknown word 'fortnights'"),
            ("every 9:30", r"expected a number, 'minute', 'hour', 'day'"),
        ],
    )
    def test_unknown_words(self, phrase: str, message: str) -> None:
        """A word the grammar does not know is named; known words out of place say what was expected."""
        with pytest.raises(ScheduleError, match=message):
            parse(phrase, name="x", zone=UTC_ZONE)

    def test_twice_a_day_is_fixed_time(self) -> None:
        """'twice a day' runs at fixed local times (Debian's once-per-local-time DST rule), while 'every 12
        hours' keeps real-time cadence: on New York's fall-back night they differ."""
        after = utc(2026, 10, 31, 12)
        assert parse("twice a day", name="x", zone=NEW_YORK).fixed_time
        assert not parse("every 12 hours", name="x", zone=NEW_YORK).fixed_time
        assert fires("0 0,12 * * *", after, 3, NEW_YORK) == fires("twice a day", after, 3, NEW_YORK)


class TestDescribe:
    @pytest.mark.parametrize(
        ("text", "words"),
        [
            ("0 9 * * MON-FRI", "at 09:00 on Monday through Friday"),
            ("*/15 * * * *", "every 15 minutes"),
            ("every 10 seconds", "every 10 seconds"),
            ("* * * * *", "every minute"),
            ("0 */6 * * *", "every 6 hours"),
            ("hourly at :05", "every hour at :05"),
            ("@monthly", "at 00:00 on day 1 of the month"),
            ("0 0 13 * FRI", "at 00:00 on day 13 of the month or on Friday"),
            ("30 6 * 6-8 SAT,SUN", "at 06:30 on Saturday and Sunday in June through August"),
            ("every weekday at 9am", "at 09:00 on Monday through Friday"),
            ("every weekend at 10:30", "at 10:30 on Saturday and Sunday"),
            ("every mon, wed and fri at 9am", "at 09:00 on Monday, Wednesday and Friday"),
            ("every friday and sunday at 18:00", "at 18:00 on Friday and Sunday"),
            ("twice a day at 9am and 9pm", "at 09:00 and 21:00"),
            ("twice a day", "at 00:00 and 12:00"),
            ("daily at 9:00, 9:30, 17:00 and 17:30", "at 09:00, 09:30, 17:00 and 17:30"),
            ("every 2 hours at :30", "every 2 hours at :30"),
            ("hourly at :15", "every hour at :15"),
            ("0 0-23/2 * * *", "every 2 hours"),
            ("0 9 * 1,7 *", "at 09:00 in January and July"),
            ("*/7 * * * *", "every 7 minutes, starting again at :00 every hour"),
            ("0 */5 * * *", "every 5 hours, starting again at 00:00 every day"),
            ("*/45 * * * * *", "every 45 seconds, starting again at :00 every minute"),
        ],
    )
    def test_words(self, text: str, words: str) -> None:
        """Common schedules read as plain words."""
        assert words == parse(text, name="x", zone=UTC_ZONE).describe()


class TestDebianDst:
    def test_fall_back_fixed_time_runs_once_at_first(self) -> None:
        """`30 1 * * *` in New York on 2026-11-01 fires once, at 05:30Z, not again at 06:30Z."""
        got = fires("30 1 * * *", utc(2026, 10, 31, 12), 2, NEW_YORK)
        assert ["2026-11-01T05:30:00+00:00", "2026-11-02T06:30:00+00:00"] == got

    def test_spring_forward_fixed_time_runs_after_jump(self) -> None:
        """`30 2 * * *` in New York on 2026-03-08 fires at 03:00 EDT (07:00Z), with a note."""
        fire = parse("30 2 * * *", name="t", zone=NEW_YORK).next_fire(utc(2026, 3, 7, 12))
        assert utc(2026, 3, 8, 7) == fire.at
        assert fire.note is not None
        assert "02:30 did not exist" in fire.note

    def test_two_skipped_times_run_once(self) -> None:
        """Two fixed times inside one gap collapse into one fire at the jump."""
        got = fires("0,30 2 * * *", utc(2026, 3, 7, 12), 2, NEW_YORK)
        assert ["2026-03-08T07:00:00+00:00", "2026-03-09T06:00:00+00:00"] == got

    def test_wildcard_keeps_real_cadence_through_fall_back(self) -> None:
        """`*/15 * * * *` fires every 15 real minutes while the hour repeats."""
        at = [datetime.fromisoformat(s) for s in fires("*/15 * * * *", utc(2026, 11, 1, 4), 16, NEW_YORK)]
        assert {timedelta(minutes=15)} == {b - a for a, b in itertools.pairwise(at)}

    def test_wildcard_keeps_real_cadence_through_spring_forward(self) -> None:
        """`*/15 * * * *` fires every 15 real minutes and never in the missing hour."""
        at = [datetime.fromisoformat(s) for s in fires("*/15 * * * *", utc(2026, 3, 8, 5), 12, NEW_YORK)]
        assert {timedelta(minutes=15)} == {b - a for a, b in itertools.pairwise(at)}
        assert all(a.astimezone(NEW_YORK).hour != 2 for a in at)

    def test_hourly_wildcard_skips_missing_hour(self) -> None:
        """`0 * * * *` runs at 01:00 EST then 03:00 EDT: one real hour apart."""
        got = fires("0 * * * *", utc(2026, 3, 8, 5, 30), 3, NEW_YORK)
        assert ["2026-03-08T06:00:00+00:00", "2026-03-08T07:00:00+00:00", "2026-03-08T08:00:00+00:00"] == got

    def test_midnight_transition(self) -> None:
        """In Santiago, midnight is skipped on 2026-09-06: a daily-at-midnight task runs at 01:00."""
        zone = ZoneInfo("America/Santiago")
        got = [
            f.at.astimezone(zone).isoformat()
            for f in parse("0 0 * * *", name="t", zone=zone).fires(utc(2026, 9, 5, 12), 2)
        ]
        assert ["2026-09-06T01:00:00-03:00", "2026-09-07T00:00:00-03:00"] == got

    def test_half_hour_shift(self) -> None:
        """Lord Howe Island moves its clocks 30 minutes: 02:15 runs at the jump, 02:30."""
        zone = ZoneInfo("Australia/Lord_Howe")
        fire = parse("15 2 * * *", name="t", zone=zone).next_fire(utc(2026, 10, 3, 0))
        assert "2026-10-04T02:30:00+11:00" == fire.at.astimezone(zone).isoformat()


# Zones with DST of 1 h, 30 min (Lord Howe), 45-minute offsets (Chatham), midnight transitions
# (Santiago, Havana, Asuncion), southern hemisphere, and Morocco's Ramadan changes.
ORACLE_ZONES = [
    "America/New_York",
    "Europe/London",
    "Europe/Berlin",
    "Australia/Sydney",
    "Australia/Adelaide",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "America/St_Johns",
    "America/Santiago",
    "America/Havana",
    "America/Asuncion",
    "Africa/Casablanca",
    "Asia/Kathmandu",
    "Pacific/Auckland",
]
ORACLE_EXPRESSIONS = [
    "30 1 * * *",
    "30 2 * * *",
    "0 0 * * *",
    "59 23 * * *",
    "0,30 2 * * *",
    "15 2 * * *",
    "45 0-3 * * *",
    "0 2 * * SUN",
    "*/15 * * * *",
    "0 * * * *",
    "15,45 * * * *",
    "* 2 * * *",
    "*/7 1-3 * * *",
    "5 */2 * * *",
    "0 0 1 * *",
]


def _transition_starts(zone: ZoneInfo) -> list[datetime]:
    """Instants an hour or so before each of the zone's offset changes in 2025-2027, found independently."""
    out = []
    t = utc(2025, 1, 1)
    prev = t.astimezone(zone).utcoffset()
    while t < utc(2028, 1, 1):
        t += timedelta(hours=1)
        off = t.astimezone(zone).utcoffset()
        if off != prev:
            out.append(t - timedelta(hours=3))
        prev = off
    return out


# cronsim 2.x skips the unique local times 02:00-02:29 after Lord Howe's 30-minute fall-back for
# hour-restricted wildcard tasks; TestBruteForce checks those against the definition instead.
CRONSIM_WRONG = {("Australia/Lord_Howe", "* 2 * * *"), ("Australia/Lord_Howe", "5 */2 * * *")}


class TestAgainstCronsim:
    """cronsim implements Debian cron's DST handling independently; we must agree with it."""

    @pytest.mark.parametrize("zone_name", ORACLE_ZONES)
    def test_around_every_transition(self, zone_name: str) -> None:
        """Around each 2025-2027 transition, every expression fires where cronsim fires."""
        zone = ZoneInfo(zone_name)
        starts = _transition_starts(zone) or [utc(2026, 6, 1)]
        for start, expr in itertools.product(starts, ORACLE_EXPRESSIONS):
            if (zone_name, expr) in CRONSIM_WRONG:
                continue
            ours = [f.at for f in parse(expr, name="t", zone=zone).fires(start, 12)]
            theirs = [d.astimezone(UTC) for d in itertools.islice(CronSim(expr, start.astimezone(zone)), 12)]
            assert theirs == ours, f"{expr} in {zone_name} from {start}"

    def test_random_starts(self) -> None:
        """From arbitrary instants across years, the next fires agree."""
        zones = [ZoneInfo(z) for z in ORACLE_ZONES]
        start = utc(2024, 1, 1, 0, 7, 13)
        for i in range(300):
            zone = zones[i % len(zones)]
            expr = ORACLE_EXPRESSIONS[i % len(ORACLE_EXPRESSIONS)]
            if (zone.key, expr) in CRONSIM_WRONG:
                continue
            at = start + timedelta(hours=i * 97 + i % 5, minutes=i * 7)
            ours = [f.at for f in parse(expr, name="t", zone=zone).fires(at, 5)]
            theirs = [d.astimezone(UTC) for d in itertools.islice(CronSim(expr, at.astimezone(zone)), 5)]
            assert theirs == ours, f"{expr} in {zone} from {at}"


WILDCARD_EXPRESSIONS = [
    "*/15 * * * *",
    "0 * * * *",
    "15,45 * * * *",
    "* 2 * * *",
    "*/7 1-3 * * *",
    "5 */2 * * *",
]


class TestBruteForce:
    """A wildcard task fires at exactly the real minutes whose local time matches: check by scanning."""

    @pytest.mark.parametrize("zone_name", ORACLE_ZONES)
    def test_wildcards_match_every_minute_scan(self, zone_name: str) -> None:
        """Scanning each minute around each transition finds exactly our fires."""
        zone = ZoneInfo(zone_name)
        for start in _transition_starts(zone)[:4]:
            end = start + timedelta(hours=6)
            minutes = [start + timedelta(minutes=m) for m in range(1, 6 * 60)]
            for expr in WILDCARD_EXPRESSIONS:
                schedule = parse(expr, name="t", zone=zone)
                ours = []
                at = start
                while (at := schedule.next_fire(at).at) < end:
                    ours.append(at)
                minute, hour = expr.split()[:2]
                expected = [t for t in minutes if _matches(minute, hour, t.astimezone(zone))]
                assert expected == ours, f"{expr} in {zone_name} from {start}"


def _matches(minute: str, hour: str, local: datetime) -> bool:
    return _field(minute, local.minute, 60) and _field(hour, local.hour, 24)


def _field(text: str, value: int, size: int) -> bool:
    """A tiny, separate reading of the cron field forms the wildcard list uses."""
    for part in text.split(","):
        base, _, step = part.partition("/")
        lo, hi = (0, size - 1) if base == "*" else (int(base.split("-")[0]), int(base.split("-")[-1]))
        if lo <= value <= hi and (value - lo) % int(step or 1) == 0:
            return True
    return False


class TestOwnExpansion:
    """Plain fields are read by our own parser for speed; croniter must agree on every form."""

    @staticmethod
    def _random_field(rng: random.Random, index: int) -> str:
        lo, hi = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7)][index]
        names = {4: ["jan", "FEB", "Mar", "apr", "dec"], 5: ["sun", "MON", "Fri", "sat"]}.get(index, [])

        def value() -> str:
            if names and rng.random() < 0.3:
                return rng.choice(names)
            return str(rng.randint(lo, hi))

        items = []
        for _ in range(rng.randint(1, 3)):
            kind = rng.randrange(6)
            if kind == 0:
                items.append("*")
            elif kind == 1:
                items.append(f"*/{rng.randint(1, hi)}")
            elif kind == 2:
                items.append(value())
            elif kind == 3:
                a, b = sorted(rng.sample(range(lo, hi + 1), 2))
                items.append(f"{a}-{b}")
            elif kind == 4:
                a, b = sorted(rng.sample(range(lo, hi + 1), 2))
                items.append(f"{a}-{b}/{rng.randint(1, hi)}")
            else:
                items.append(f"{rng.randint(lo, hi)}/{rng.randint(1, hi)}")
        return ",".join(items)

    def test_random_fields_agree_with_croniter(self) -> None:
        """2,000 random plain fields expand to the same values as croniter's."""
        from scheduler.schedule import _croniter_masks, _plain_field

        rng = random.Random(42)
        read = 0
        for _ in range(2000):
            index = rng.randrange(6)
            part = self._random_field(rng, index)
            probe = ["*"] * 6
            probe[index] = part
            ours = _plain_field(part, index)
            if ours is None:
                continue  # left to croniter, e.g. a day-of-week range that wraps past Saturday
            read += 1
            theirs = _croniter_masks(" ".join(probe), "")[index]
            assert theirs == ours, f"field {index}: {part}"
        assert read > 1900

    @pytest.mark.parametrize(
        "expr",
        ["0 0 * * 7", "0 0 * * 5-7", "0 0 * * FRI-7", "59/20 * * * *", "0 */5 * * *", "0 0 1-31/10 * *"],
    )
    def test_edge_forms_agree_with_croniter(self, expr: str) -> None:
        """Sunday as 7, ranges ending on 7, {start}/{step} and stepped ranges agree with croniter."""
        from scheduler.schedule import _croniter_masks, _plain_field

        raw = ["0", *expr.split()]
        assert _croniter_masks(" ".join(raw), "") == tuple(_plain_field(p, i) for i, p in enumerate(raw))

    def test_wrapping_weekday_range_goes_to_croniter(self) -> None:
        """SAT-SUN is left to croniter, which reads it as Saturday and Sunday."""
        got = fires("0 0 * * SAT-SUN", utc(2026, 1, 1), 2)  # Jan 3 2026 is a Saturday
        assert ["2026-01-03T00:00:00+00:00", "2026-01-04T00:00:00+00:00"] == got
