"""The docs cannot go stale: every command shown with its output is run, every link resolves, every install
line names our distribution, and the README's example is the file that is checked.

A ```console block in README.md or docs/*.md holds `$ command` lines, each followed by the output it prints
(stdout and stderr together). The commands of one page run in order, in one scratch folder holding a copy of
schedules.example.yaml and docs/examples/, so a page can set things up (`scheduler init`, a `run-now` into a
store) before it shows them. Both sides are compared after masking what changes from run to run: date-times
(and the weekday and zone beside them), durations in seconds, run ids; `…` in the docs stands for any text,
and runs of spaces compare equal, so table columns may shift when a masked value has another width.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_MARK = "@@docs-test-end@@"
_COMMAND_TIMEOUT_S = 60

_MASKS = [
    # A date-time, with the weekday before it and the zone after it (a zone's abbreviation changes with
    # the season: GMT in winter, BST in summer).
    (
        re.compile(
            r"(?:\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) )?\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?"
            r"(?:Z|[+-]\d\d:?\d\d)?(?: (?:[A-Z]{2,5}|[+-]\d\d(?:\d\d)?)\b)?"
        ),
        "<time>",
    ),
    (re.compile(r"\b[0-9a-f]{12}\b"), "<id>"),  # run ids
    (re.compile(r"\b\d+(?:\.\d+)?(?:s|ms)\b"), "<dur>"),
    (re.compile(r"\b(duration_s|pid)=[\d.]+"), r"\1=<n>"),
    (re.compile(r'"(duration_s|pid)": [\d.]+'), r'"\1": <n>'),
]


@dataclass
class Example:
    page: Path
    line: int  # of the `$` line, 1-based
    command: str
    expected: list[str]


def _examples(page: Path) -> list[Example]:
    examples: list[Example] = []
    in_console = False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        fence = line.strip()
        if fence.startswith("```"):
            in_console = not in_console and fence == "```console"
            continue
        if not in_console:
            continue
        if line.startswith("$ "):
            examples.append(Example(page, number, line[2:], []))
        elif examples:
            examples[-1].expected.append(line)
    return examples


def _mask(line: str) -> str:
    for pattern, replacement in _MASKS:
        line = pattern.sub(replacement, line)
    return " ".join(line.split())


def _matches(expected: str, actual: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in _mask(expected).split("…"))
    return re.fullmatch(pattern, _mask(actual)) is not None


def _strip_blank_tail(lines: list[str]) -> list[str]:
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def _run_page(page: Path, work: Path) -> list[tuple[Example, list[str]]]:
    """Run every example of the page in one shell, in order, so that `$?` and files carry over."""
    examples = _examples(page)
    script = ["set +e"]
    for example in examples:
        script.append(example.command)
        script.append(f"__rc=$?; printf '\\n{_MARK}\\n'; (exit $__rc)")
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(work),
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        "COLUMNS": "100",
    }
    result = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=work,
        env=env,
        capture_output=False,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=_COMMAND_TIMEOUT_S * max(1, len(examples)),
    )
    outputs = result.stdout.split(f"\n{_MARK}\n")
    return [(example, output.splitlines()) for example, output in zip(examples, outputs, strict=False)]


def _scratch(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "schedules.example.yaml", tmp_path / "schedules.example.yaml")
    shutil.copytree(ROOT / "docs" / "examples", tmp_path / "docs" / "examples")
    return tmp_path


@pytest.mark.parametrize("page", [p for p in PAGES if _examples(p)], ids=lambda p: p.name)
def test_command_output_in_the_docs_is_what_the_command_prints(page: Path, tmp_path: Path) -> None:
    results = _run_page(page, _scratch(tmp_path))
    assert len(results) == len(_examples(page))
    problems = []
    for example, actual in results:
        expected = _strip_blank_tail(example.expected)
        got = _strip_blank_tail(actual)
        same = len(expected) == len(got) and all(_matches(e, a) for e, a in zip(expected, got, strict=True))
        if not same:
            problems.append(
                f"{page.relative_to(ROOT)}:{example.line}: $ {example.command}\n"
                f"--- the docs show:\n" + "\n".join(expected) + "\n--- the command prints:\n" + "\n".join(got)
            )
    assert not problems, "\n\n".join(problems)


def test_the_masks_keep_what_matters() -> None:
    assert _matches("x  2026-11-30 09:00:00 GMT  y", "x 2027-06-01 10:15:00 BST y")
    assert _matches("started after 2.4s", "started after 0.1s")
    assert _matches("run_id=… trigger=schedule", "run_id=0123456789ab trigger=schedule")
    assert not _matches("OK, 5 tasks (4 enabled)", "OK, 6 tasks (5 enabled)")
    assert not _matches("status=succeeded", "status=failed")


_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors: set[str] = set()
    in_code = False
    for line in page.read_text().splitlines():
        if line.strip().startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            anchors.add(_slug(line.lstrip("#")))
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves(page: Path) -> None:
    broken = []
    for target in _LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_install_lines_name_our_distribution(page: Path) -> None:
    """`scheduler` on the package index is another project: every install names scheduler-clock."""
    text = page.read_text()
    wrong = [
        m.group(0)
        for m in re.finditer(r"pip install [^\n`]*", text)
        if re.search(r"(?<![\w-])'?scheduler(?:\[|'|\s|$)", m.group(0))
    ]
    wrong += re.findall(r"`scheduler\[[a-z,]+\]`", text)
    assert not wrong, f"{page.relative_to(ROOT)} installs the wrong distribution: {wrong}"


def test_the_readme_example_is_the_file_that_is_checked() -> None:
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / "docs" / "examples" / "ten-lines.yaml").read_text()
    section = readme.split("## A ten-line example", 1)[1]
    shown = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert shown == example
    assert len(example.strip().splitlines()) <= 10


def test_the_readme_reads_in_five_minutes() -> None:
    readme = ROOT / "README.md"
    assert readme.stat().st_size < 20 * 1024
    assert "- [Install](#install)" in readme.read_text()  # a table of contents


def test_no_page_is_left_out_of_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        assert f"(docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"


_LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical", "msg"}
_EVENT_NAME = re.compile(r"[a-z_]+\.[a-z_]+")


def _logged_events() -> tuple[dict[str, set[str]], set[str]]:
    """Every event the package logs with a literal name, with the keywords it is logged with; and every key
    bound to a logger somewhere (task, run_id...), which any event may then carry. An event logged with
    `**fields` somewhere may carry anything: it gets the wildcard "*"."""
    import ast

    events: dict[str, set[str]] = {}
    bound: set[str] = set()
    for module in (ROOT / "scheduler").glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Dict):  # an event built by hand: {"event": "log.dropped", ...}
                keys = [k.value if isinstance(k, ast.Constant) else "*" for k in node.keys]
                values = dict(zip(keys, node.values, strict=True))
                name = values.get("event")
                if isinstance(name, ast.Constant) and _EVENT_NAME.fullmatch(str(name.value)):
                    events.setdefault(str(name.value), set()).update(str(k) for k in keys if k != "event")
                continue
            if not isinstance(node, ast.Call):
                continue
            keywords = {k.arg if k.arg is not None else "*" for k in node.keywords}
            # logger.info("x.y", ...), or a bound method held in a variable: log("x.y", ...)
            method = node.func.attr if isinstance(node.func, ast.Attribute) else "msg"
            if method == "bind":
                bound |= keywords
            elif (
                method in _LOG_METHODS
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and _EVENT_NAME.fullmatch(node.args[0].value)
            ):
                events.setdefault(node.args[0].value, set()).update(keywords)
    return events, bound


def _documented_events() -> dict[str, set[str]]:
    """The events table of docs/logs.md: event -> the fields its row names (before any explanation)."""
    documented: dict[str, set[str]] = {}
    for line in (ROOT / "docs" / "logs.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not re.fullmatch(r"`[a-z_]+\.[a-z_]+`", cells[0]):
            continue
        fields = re.sub(r"\([^()]*\)", "", cells[2]).split(": ", 1)[0]
        documented[cells[0].strip("`")] = set(re.findall(r"`([a-z_]+)`", fields))
    return documented


def test_every_logged_event_is_documented_with_the_fields_it_carries() -> None:
    logged, bound = _logged_events()
    documented = _documented_events()
    assert documented, "no events table found in docs/logs.md"
    assert sorted(set(logged) - set(documented)) == [], "logged but not documented"
    assert sorted(set(documented) - set(logged)) == [], "documented but never logged"
    wrong = {
        event: sorted(fields - logged[event] - bound)
        for event, fields in documented.items()
        if "*" not in logged[event] and fields - logged[event] - bound
    }
    assert wrong == {}, "fields documented that the events do not carry"


def _logfmt_keys(line: str) -> list[str]:
    return re.findall(r'(?:^| )([a-z_]+)=(?:"(?:[^"\\]|\\.)*"|\S*)', line)


def test_log_examples_carry_documented_fields_in_the_order_the_formatter_writes() -> None:
    """The example lines in docs/logs.md and the README are hand-picked from real runs: each names a
    documented event, with fields the table lists for it, in the order scheduler/log.py puts them."""
    from scheduler import log

    documented = _documented_events()
    _, bound = _logged_events()
    text = (ROOT / "docs" / "logs.md").read_text() + (ROOT / "README.md").read_text()
    examples = [line for line in text.splitlines() if line.startswith("timestamp=")]
    assert len(examples) >= 10
    for line in examples:
        keys = _logfmt_keys(line)
        assert keys[:3] == ["timestamp", "level", "event"], line
        event = re.search(r" event=(\S+)", line)
        assert event is not None
        name = event.group(1)
        assert name in documented, line
        extra = set(keys[3:]) - documented[name] - bound
        assert not extra, f"{line}\n  fields not in the table for {name}: {sorted(extra)}"
        in_order = log._ordered_keys(dict.fromkeys(keys))
        assert keys == in_order, f"{line}\n  the formatter writes: {in_order}"
