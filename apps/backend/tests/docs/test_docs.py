"""The documents stay readable: the summary's revision chain is Alembic's, prose lines
have an ordinary length, and the operator's performance document carries no run history
(that is the log's, apps/backend/bench/RESULTS.md)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from src.config import BACKEND_DIR
from src.migration_runner import alembic_config

REPO = BACKEND_DIR.parent.parent
SUMMARY = REPO / "IMPLEMENTATION_SUMMARY.md"
PERFORMANCE = REPO / "docs" / "PERFORMANCE.md"
PROSE = [
    SUMMARY,
    REPO / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    BACKEND_DIR / "bench" / "RESULTS.md",
]
LONGEST_LINE = 100

# A token that cannot be wrapped without changing what a reader copies: an inline code
# span or a URL, alone on its line but for indentation, a list marker and punctuation.
UNBREAKABLE = re.compile(r"^\s*(?:[-*]\s+|\d+\.\s+)?[(\[<]*(`[^`]+`|https?://\S+?)[)\]>.,;:]*$")

# What a commit hash looks like: 7 to 40 hex digits, in backticks (but not a plain
# number) or as a word of its own with both digits and the letters a to f (so neither
# "1000000" nor a word such as "effaced" counts).
HASH_IN_BACKTICKS = re.compile(r"`([0-9a-f]{7,40})`", re.I)
HASH_WORD = re.compile(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b", re.I)


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match is not None, f"no section {title!r}"
    return match.group(1)


def long_prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line over LONGEST_LINE characters, except inside
    fenced code blocks, table rows, and a line that is one unbreakable token."""
    found = []
    in_code = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith(("```", "~~~")):
            in_code = not in_code
            continue
        if in_code or len(line) <= LONGEST_LINE or line.lstrip().startswith("|"):
            continue
        if not UNBREAKABLE.match(line):
            found.append((number, line))
    return found


def hash_like(text: str) -> set[str]:
    in_backticks = {t for t in HASH_IN_BACKTICKS.findall(text) if not t.isdigit()}
    return in_backticks | set(HASH_WORD.findall(text))


def test_the_summarys_revision_chain_is_alembics_from_base_to_head():
    listed = section(SUMMARY.read_text(), "Revision chain")
    chain = re.findall(r"^\d+\. `([^`]+)`", listed, re.M)
    scripts = ScriptDirectory.from_config(alembic_config())
    assert len(scripts.get_heads()) == 1, "one head, so the chain is one line"
    from_base = [r.revision for r in scripts.walk_revisions("base", "heads")][::-1]
    assert chain == from_base


@pytest.mark.parametrize("path", PROSE, ids=lambda p: str(p.relative_to(REPO)))
def test_no_prose_line_is_over_100_characters(path: Path):
    assert long_prose_lines(path.read_text()) == []


def test_the_line_rule_spares_only_what_cannot_be_wrapped():
    prose = "word " * 30
    span = "`" + "x " * 60 + "`"
    url = "https://example.org/" + "a" * 100
    text = "\n".join(
        [prose, f"| {prose} |", "```", prose, "```", f"  {span},", f"- <{url}>", f"see {span}"]
    )
    assert [number for number, _ in long_prose_lines(text)] == [1, 8]


def test_the_performance_document_names_no_issue_commit_or_stop():
    text = PERFORMANCE.read_text()
    assert re.findall(r"issue \d+", text, re.I) == []
    assert hash_like(text) == set()
    assert re.findall(r"this (?:stop|session)", text, re.I) == []


def test_the_performance_document_has_no_dated_runs():
    assert re.findall(r"\b\d{4}-\d{2}-\d{2}\b", PERFORMANCE.read_text()) == []


def test_the_hash_pattern_finds_hashes_and_spares_numbers_and_revisions():
    text = (
        "the release before (`fb7fa23`), commit 4736f13 and `1000000`, 1,454/s, "
        "`20261206_one_round_trip`, effaced, p99 37.5 ms"
    )
    assert hash_like(text) == {"fb7fa23", "4736f13"}


def test_every_benchmark_script_is_in_the_performance_document():
    text = PERFORMANCE.read_text()
    for script in sorted((BACKEND_DIR / "bench").glob("*.py")):
        assert f"bench/{script.name}" in text, script.name
