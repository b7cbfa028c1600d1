"""Every figure table in docs/benchmarks/*.md carries the command that produced it.

A "figure table" is a markdown table with a digit in its body. Its command is a fenced code
block or an inline code span that runs something (``python``, ``ies``, ``.venv/bin/``, ``torchrun``, a ``benchmarks/*.py`` script)
in the same section, i.e. between the headings around the table. Tables that only restate
figures computed elsewhere on the page still sit under the heading whose command made them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Tuple

import pytest

PAGES = sorted((Path(__file__).resolve().parents[2] / "docs" / "benchmarks").glob("*.md"))
COMMAND = re.compile(r"(\.venv/bin/|\bpython3?\s|\bies\s+[a-z]|\btorchrun\b|\bbenchmarks/\w+\.py)")


def sections(text: str) -> List[Tuple[str, str]]:
    """``(heading, body)`` pairs; a page's text before its first heading is its own section."""
    out, head, body = [], "(top)", []
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"#{1,6} ", line):
            out.append((head, "\n".join(body)))
            head, body = line, []
        else:
            body.append(line)
    out.append((head, "\n".join(body)))
    return out


def figure_tables(body: str) -> List[str]:
    tables, cur = [], []
    for line in body.splitlines() + [""]:
        if line.lstrip().startswith("|"):
            cur.append(line)
            continue
        if len(cur) >= 3 and re.match(r"\s*\|[\s:|-]+\|\s*$", cur[1]) and any(re.search(r"\d", r) for r in cur[2:]):
            tables.append("\n".join(cur))
        cur = []
    return tables


def has_command(body: str) -> bool:
    code = re.findall(r"```.*?```", body, flags=re.S) + re.findall(r"`[^`\n]+`", body)
    return any(COMMAND.search(c) for c in code)


def test_there_are_pages() -> None:
    assert any(p.name == "bookkeeping.md" for p in PAGES)


def test_the_check_finds_a_table_without_its_command() -> None:
    page = "# A\n\n| x | y |\n|---|---|\n| 1 | 2 |\n\n# B\n\n```\n.venv/bin/python benchmarks/b.py\n```\n\n| a |\n|---|\n| 3 |\n"
    got = [(h, has_command(b)) for h, b in sections(page) if figure_tables(b)]
    assert got == [("# A", False), ("# B", True)]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_figure_table_carries_its_command(page: Path) -> None:
    missing = [head for head, body in sections(page.read_text()) if figure_tables(body) and not has_command(body)]
    assert not missing, f"{page.name}: figure tables without a command in their section: {missing}"
