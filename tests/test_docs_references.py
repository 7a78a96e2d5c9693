"""References into the design document stay valid, and nothing cites what users cannot see.

The project's design document is ``docs/design.md``. The code, the benchmarks, the examples, the
README and the docs must not mention the team's internal brief (a file named ``DESIGN.md``) or
cite tracker issue numbers ("issue 5", "issues 2 and 3"): a reader of the repository has
neither. Every ``docs/design.md#anchor`` link must point at a heading of ``docs/design.md``
(GitHub-style anchors), and so must every quoted section name (``docs/design.md, "Checkpoints"``).

Scanned: every file git does not ignore under ``src/``, ``benchmarks/``, ``examples/``,
``docs/`` and ``README.md`` (build outputs such as ``*.egg-info`` are ignored by git); binary
files (a NUL byte) are skipped. Outside a git checkout every file there is scanned.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"
SCANNED = ("src", "benchmarks", "examples", "docs", "README.md")

#: Any spelling of "design.md" other than the all-lowercase one is the internal brief's name.
DESIGN_NAME = re.compile(r"design\.md", re.IGNORECASE)
#: A tracker citation: "issue 5", "Issue #12", "issues 2 and 3".
ISSUE = re.compile(r"\bissues?\s*#?\s*\d+", re.IGNORECASE)
#: A link into the design document: ``docs/design.md#anchor``.
ANCHOR_LINK = re.compile(r"docs/design\.md#([^\s)\]>`'\",;]*)")
#: A link inside the design document to one of its own headings: ``](#anchor)``.
LOCAL_LINK = re.compile(r"\]\(#([^)\s]*)\)")
#: A quoted section name: ``docs/design.md, "Name"`` or ``docs/design.md, section 'Name'``.
QUOTED_SECTION = re.compile(r"docs/design\.md,\s+(?:sections?\s+)?([\"'])([^\"']{1,100}?)\1")


def project_files() -> list[Path]:
    """The scanned files: those git tracks or would track, else every file under SCANNED."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *SCANNED],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        files = [ROOT / name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for name in SCANNED:
            p = ROOT / name
            files.extend([p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file()))
    return sorted({f for f in files if f.is_file()})


def text_of(path: Path) -> str | None:
    """The file's text, or None for a binary file (one holding a NUL byte)."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    return data.decode("utf-8", errors="replace")


def text_files() -> Iterator[tuple[Path, str]]:
    for path in project_files():
        text = text_of(path)
        if text is not None:
            yield path, text


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub gives the headings of ``markdown``: lowercase, punctuation except ``-``
    and ``_`` dropped, each space a hyphen, ``-1``, ``-2`` ... appended to repeated ones."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        m = re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)
        if fenced or m is None:
            continue
        base = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(base, 0)
        seen[base] = n + 1
        anchors.add(base if n == 0 else f"{base}-{n}")
    return anchors


def heading_titles(markdown: str) -> set[str]:
    """The headings' text, lowercased with whitespace collapsed."""
    return {
        " ".join(m.group(1).split()).lower()
        for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", markdown, re.MULTILINE)
    }


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def forbidden_citations(text: str) -> list[tuple[int, str]]:
    """``(line, match)`` for every mention of the internal brief or of an issue number."""
    hits = [(_line(text, m.start()), m.group()) for m in DESIGN_NAME.finditer(text)]
    hits = [(n, s) for n, s in hits if s != "design.md"]
    hits += [(_line(text, m.start()), m.group()) for m in ISSUE.finditer(text)]
    return sorted(hits)


def broken_references(text: str, anchors: set[str], titles: set[str]) -> list[tuple[int, str]]:
    """``(line, reference)`` for every link or quoted section name not found in the design."""
    bad = [
        (_line(text, m.start()), m.group())
        for m in ANCHOR_LINK.finditer(text)
        if m.group(1) not in anchors
    ]
    for m in QUOTED_SECTION.finditer(text):
        # A name may run over a line break, inside a comment ("# ") or an indented docstring.
        name = " ".join(re.sub(r"\n\s*(?:#+|//)?", " ", m.group(2)).split()).lower()
        if name not in titles:
            bad.append((_line(text, m.start()), m.group()))
    return sorted(bad)


def _report(hits: dict[Path, list[tuple[int, str]]]) -> str:
    return "\n".join(
        f"{path.relative_to(ROOT)}:{line}: {what!r}"
        for path, found in sorted(hits.items())
        for line, what in found
    )


def test_design_document_exists_with_the_sections_others_cite() -> None:
    titles = heading_titles(DESIGN.read_text(encoding="utf-8"))
    for name in ("hostile-input policy", "checkpoints", "pre-aggregators", "run ownership"):
        assert name in titles, f"docs/design.md has no section {name!r}"


def test_no_internal_brief_or_issue_numbers_are_cited() -> None:
    hits = {path: found for path, text in text_files() if (found := forbidden_citations(text))}
    assert not hits, "cite docs/design.md, never DESIGN.md or issue numbers:\n" + _report(hits)


def test_design_links_and_section_names_exist() -> None:
    design = DESIGN.read_text(encoding="utf-8")
    anchors, titles = github_anchors(design), heading_titles(design)
    hits = {
        path: found
        for path, text in text_files()
        if (found := broken_references(text, anchors, titles))
    }
    local = [
        (_line(design, m.start()), m.group())
        for m in LOCAL_LINK.finditer(design)
        if m.group(1) not in anchors
    ]
    if local:
        hits[DESIGN] = sorted({*hits.get(DESIGN, []), *local})
    assert not hits, "references to missing sections of docs/design.md:\n" + _report(hits)


def test_checks_catch_what_they_are_for() -> None:
    """The helpers flag the cases they exist for and pass the valid forms."""
    design = "# Title\n\n## Hostile-input policy\n\n## Krum and Multi-Krum\n\n## Notes\n## Notes\n"
    anchors, titles = github_anchors(design), heading_titles(design)
    assert {"hostile-input-policy", "krum-and-multi-krum", "notes", "notes-1"} <= anchors
    good = (
        "see docs/design.md#hostile-input-policy and (docs/design.md#krum-and-multi-krum).\n"
        '(docs/design.md, "Hostile-input policy"), docs/design.md, section \'Krum and\n'
        '    Multi-Krum\', # docs/design.md, "Krum and\n# Multi-Krum"\n'
    )
    assert broken_references(good, anchors, titles) == []
    assert forbidden_citations(good) == []
    bad = 'x\ndocs/design.md#hostile-input and docs/design.md, "Hostile policy"\n'
    assert [line for line, _ in broken_references(bad, anchors, titles)] == [2, 2]
    cited = "DESIGN.md section 4\n(Issue 8), issues 2 and 3, issue #12; tissue 5 is fine\n"
    found = forbidden_citations(cited)
    assert sorted(s for _, s in found) == ["DESIGN.md", "Issue 8", "issue #12", "issues 2"]
    assert [line for line, _ in found] == [1, 2, 2, 2]
    assert text_of(Path(__file__)) is not None
