"""The documentation site: it builds strictly (a broken link or a missing API reference fails),
and every code snippet in it runs: the hand-written pages' ``python`` blocks, the generated
defense and attack pages' snippets, and the ``toml`` blocks parse (config examples resolve)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def _blocks(lang: str) -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        found = [code for kind, code in FENCE.findall(page.read_text()) if kind == lang]
        out += [(f"{page.relative_to(ROOT)}#{i}", code) for i, code in enumerate(found)]
    return out


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(code: str, where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a snippet in ``tmp_path``; what it registers (a plugin page's defense) is removed
    again, so that the other tests see the registries as they were."""
    from tesseract_fl.plugins import registries

    monkeypatch.chdir(tmp_path)  # a snippet that writes files writes them here
    before = {kind: set(reg.infos) for kind, reg in registries().items()}
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, where, "exec"), {"__name__": "__snippet__"})
    finally:
        for kind, reg in registries().items():
            for name in set(reg.infos) - before[kind]:
                reg.pop(name, None)
                reg.infos.pop(name, None)


@pytest.mark.parametrize(("where", "code"), _blocks("python"), ids=lambda v: str(v)[:40])
def test_page_snippet_runs(
    where: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run(code, where, tmp_path, monkeypatch)


def test_pages_have_snippets() -> None:
    assert len(_blocks("python")) >= 4  # the collection above is not silently empty


@pytest.mark.parametrize(("where", "code"), _blocks("toml"), ids=lambda v: str(v)[:40])
def test_page_toml_parses(where: str, code: str) -> None:
    tomllib.loads(code)


def test_generated_pages_cover_every_component_and_their_snippets_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tesseract_fl.plugins import registries

    pages = _hooks().generated_pages()
    regs = registries()
    for kind, folder in (("defense", "defenses"), ("attack", "attacks")):
        for name in regs[kind].infos:
            page = pages[f"{folder}/{name}.md"]
            assert f"::: {regs[kind].infos[name].obj.__module__}" in page
            (snippet,) = [code for lang, code in FENCE.findall(page) if lang == "python"]
            _run(snippet, f"{folder}/{name}.md", tmp_path, monkeypatch)
    from tesseract_fl.preaggregators import PRE_AGGREGATORS

    for name in PRE_AGGREGATORS:
        page = pages[f"defenses/pre-{name}.md"]
        (snippet,) = [code for lang, code in FENCE.findall(page) if lang == "python"]
        _run(snippet, f"defenses/pre-{name}.md", tmp_path, monkeypatch)
    keys = pages["reference/config.md"]
    assert "ExperimentConfig" in keys and "`tesseract`" in keys and "`full_trim`" in keys
    assert "tesseract-fl grid" in pages["reference/cli.md"]


def test_site_builds_strictly(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    assert mkdocs is not None, "mkdocs is a dev dependency: bash scripts/test.sh installs it"
    proc = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    krum = (tmp_path / "site" / "defenses" / "krum" / "index.html").read_text()
    assert "Blanchard" in krum  # the module docstring (formula, citation) is rendered
    assert (tmp_path / "site" / "reference" / "config" / "index.html").is_file()
