"""The user documentation holds: every relative link in README.md and docs/*.md
resolves (the file, and the #anchor where one is given, by GitHub's heading-anchor
rules), every ```python block of README.md runs as written (in a temporary
folder holding the files it names; a block may use what earlier blocks defined),
and README.md stays short and speaks to users only."""

from __future__ import annotations

import re
import textwrap
import unicodedata
from pathlib import Path
from typing import Dict, List, Set, Tuple

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"

if not README.is_file():  # an unpacked wheel or an installed copy of the tests
    pytest.skip("README.md is not in this copy of the source tree", allow_module_level=True)

README_MAX_LINES = 260

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target "title") and ![alt](target); the target has no spaces or parentheses
# other than balanced ones inside it (Markdown allows one level)
INLINE_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+(?:\([^)\s]*\)[^)\s>]*)*)>?"
                         r"(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")

# Words of the process that built the project, not of its use (README.md).
PROCESS_WORDS = re.compile(r"\bissues?\b|\bspec\b|SPEC\.md|\bseeds?\b|\bsessions?\b|\bhelpers?\b|"
                           r"\bcoordinator\b|\b\d{4}-\d{2}-\d{2}\b", re.IGNORECASE)
# docs/ pages may speak of an ONNX Runtime session or an RNG seed, never of these.
DOCS_PROCESS_WORDS = re.compile(r"\bissue\s*#?\d+|SPEC\.md|\bthe spec\b|\bseed's\b|\bcoordinator\b",
                                re.IGNORECASE)


def pages() -> List[Path]:
    return [README] + sorted(DOCS.glob("*.md"))


def page_id(p: Path) -> str:
    return str(p.relative_to(ROOT))


def prose_lines(text: str) -> List[Tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    out, fence = [], None
    for i, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(2)
            continue
        if fence is not None:
            if line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
                fence = None
            continue
        out.append((i, line))
    return out


def code_blocks(text: str, lang: str) -> List[Tuple[int, str]]:
    """(first line number, source) of every fenced block whose info string is `lang`."""
    blocks, cur, start, fence, indent = [], None, 0, None, ""
    for i, line in enumerate(text.splitlines(), 1):
        if fence is None:
            m = FENCE.match(line)
            if m:
                fence, indent = m.group(2), m.group(1)
                cur, start = ([] if m.group(3).lower() == lang else None), i + 1
            continue
        if line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
            if cur is not None:
                blocks.append((start, textwrap.dedent("\n".join(cur))))
            fence, cur = None, None
            continue
        if cur is not None:
            cur.append(line[len(indent):] if line.startswith(indent) else line)
    return blocks


# ---- GitHub's heading anchors ---------------------------------------------------------
def _heading_text(raw: str) -> str:
    """The text GitHub renders for a heading's Markdown: inline code keeps its
    content, links their text, emphasis markers and HTML tags go."""
    s = INLINE_CODE.sub(lambda m: m.group(2).strip(), raw)
    s = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", s)
    s = re.sub(r"<[^>]+>", "", s)
    s = re.sub(r"(\*\*|__|\*|(?<!\w)_(?=\w)|(?<=\w)_(?!\w)|~~)", "", s)
    return s


def slug(raw: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (letters,
    digits, marks, '_', '-' and spaces stay), each space a hyphen."""
    text = _heading_text(raw).strip().lower()
    keep = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in " -_" or cat[0] in "LNM":
            keep.append(ch)
    return "".join(keep).replace(" ", "-")


def anchors(path: Path) -> Set[str]:
    """Every anchor of a Markdown page: its headings' slugs, a repeated slug
    numbered -1, -2, ... as GitHub does, and explicit <a name/id="..."> tags."""
    text = path.read_text(encoding="utf-8")
    seen: Dict[str, int] = {}
    out: Set[str] = set()
    for _, line in prose_lines(text):
        m = HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
        for a in re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", line):
            out.add(a)
    return out


def links(path: Path) -> List[Tuple[int, str]]:
    """(line, target) of every link of a page outside code (inline and reference style)."""
    out = []
    for i, line in prose_lines(path.read_text(encoding="utf-8")):
        line = INLINE_CODE.sub("", line)
        out += [(i, m.group(1)) for m in INLINE_LINK.finditer(line)]
        m = REF_DEF.match(line)
        if m:
            out.append((i, m.group(1)))
    return out


def test_slug_follows_github():
    """Anchors as GitHub makes them (checked against rendered pages)."""
    assert slug("Kernels, ISAs and environment variables") == "kernels-isas-and-environment-variables"
    assert slug("`quantcore.torch`: layers inside a PyTorch model") == \
        "quantcoretorch-layers-inside-a-pytorch-model"
    assert slug("Accuracy: method='mse'") == "accuracy-methodmse"
    assert slug("AVX-512 / VNNI tiled GEMM") == "avx-512--vnni-tiled-gemm"
    assert slug("quantize_model and `quantize_model`") == "quantize_model-and-quantize_model"
    assert slug("**Bold** and *em* [link](x.md)") == "bold-and-em-link"


def test_anchor_numbering(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# A\n\n```\n# not a heading\n```\n\n## A\n\n### B!\n", encoding="utf-8")
    assert anchors(page) == {"a", "a-1", "b"}


@pytest.mark.parametrize("page", pages(), ids=page_id)
def test_relative_links_resolve(page):
    bad = []
    for line, target in links(page):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            bad.append(f"line {line}: {target} -> {dest} does not exist")
            continue
        if anchor:
            if dest.is_dir() or dest.suffix.lower() != ".md":
                bad.append(f"line {line}: {target}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(dest):
                bad.append(f"line {line}: {target}: no heading of {dest.name} has the anchor "
                           f"#{anchor} (it has {sorted(anchors(dest))})")
    assert not bad, f"{page_id(page)}:\n" + "\n".join(bad)


def test_docs_pages_exist_and_are_linked():
    """Every page of docs/ is reachable from docs/index.md, and the index from README."""
    index = DOCS / "index.md"
    assert index.is_file()
    linked = {(index.parent / t.partition("#")[0]).resolve() for _, t in links(index)}
    missing = [p.name for p in DOCS.glob("*.md") if p != index and p.resolve() not in linked]
    assert not missing, f"docs/index.md does not link to {missing}"
    assert index.resolve() in {(ROOT / t.partition("#")[0]).resolve() for _, t in links(README)}


# ---- README.md: short, for users -------------------------------------------------------
def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move depth to docs/"


def test_readme_has_no_process_words():
    found = [f"line {i}: {line.strip()}" for i, line in
             enumerate(README.read_text(encoding="utf-8").splitlines(), 1)
             if PROCESS_WORDS.search(line)]
    assert not found, "README.md speaks of how it was made:\n" + "\n".join(found)


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=page_id)
def test_docs_have_no_process_words(page):
    found = [f"line {i}: {line.strip()}" for i, line in
             enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
             if DOCS_PROCESS_WORDS.search(line)]
    assert not found, f"{page_id(page)} speaks of how it was made:\n" + "\n".join(found)


def test_readme_keeps_the_quickstart_commands():
    bash = [src.strip() for _, src in code_blocks(README.read_text(encoding="utf-8"), "bash")]
    assert "pip install . && quantcore bench" in bash
    assert 'pip install ".[test]" && python -m pytest tests' in bash


# ---- README.md's Python blocks run ----------------------------------------------------
def _write_model_safetensors(path: Path) -> None:
    from safetensors.numpy import save_file
    rng = np.random.default_rng(1)
    save_file({"embeddings.weight": rng.standard_normal((100, 64)).astype(np.float32),
               "layers.0.weight": rng.standard_normal((128, 64)).astype(np.float32),
               "layers.0.bias": np.zeros(128, np.float32),
               "lm_head.weight": rng.standard_normal((100, 128)).astype(np.float32)},
              str(path))


def _write_model_gguf(path: Path) -> None:
    pytest.importorskip("gguf", reason="writing the tour's model.gguf needs the gguf package "
                                       "(pip install gguf)")
    import quantcore as qc
    rng = np.random.default_rng(2)
    qc.gguf.save(str(path), {
        "blk.0.ffn_up.weight": qc.quantize(rng.standard_normal((256, 64)).astype(np.float32),
                                           qc.QuantConfig.q4_0()),
        "output_norm.weight": np.ones(64, np.float32)})


# Files the README's blocks read, made before the blocks run.  A name the blocks
# write themselves needs no entry.
FIXTURES = {"model.safetensors": _write_model_safetensors, "model.gguf": _write_model_gguf}
# Modules a block may import that quantcore does not need: a block using one that is
# missing is skipped, saying so.
OPTIONAL = ("torch", "onnx", "onnxruntime", "gguf", "tokenizers", "matplotlib", "threadpoolctl")

BLOCKS = code_blocks(README.read_text(encoding="utf-8"), "python")


def _optional_needs(src: str) -> List[str]:
    mods = set(re.findall(r"^\s*(?:from|import)\s+([\w.]+)", src, re.M))
    mods |= {"torch"} if "quantcore.torch" in src else set()
    return sorted(m.split(".")[0] for m in mods if m.split(".")[0] in OPTIONAL)


def test_readme_has_python_blocks():
    assert BLOCKS, "README.md has no ```python block"


@pytest.mark.parametrize("n", range(len(BLOCKS)), ids=[f"line{ln}" for ln, _ in BLOCKS])
def test_readme_python_block_runs(n, tmp_path, monkeypatch, threads):
    """Block n runs after blocks 0..n-1, in one namespace, in a folder holding the
    files the blocks name."""
    for mod in sorted({m for _, src in BLOCKS[:n + 1] for m in _optional_needs(src)}):
        pytest.importorskip(mod, reason=f"README block at line {BLOCKS[n][0]} (or one before it) "
                                        f"imports {mod}, which is not installed")
    monkeypatch.chdir(tmp_path)
    text = "\n".join(src for _, src in BLOCKS[:n + 1])
    for name, write in FIXTURES.items():
        if re.search(r"[\"']" + re.escape(name) + r"[\"']", text):
            write(tmp_path / name)
    import quantcore
    isa = quantcore.get_isa()
    ns: Dict[str, object] = {"__name__": "__readme__"}
    try:
        for line, src in BLOCKS[:n + 1]:
            code = compile("\n" * (line - 1) + src, str(README), "exec")
            exec(code, ns)  # noqa: S102 (the README's own code)
    finally:  # the blocks may change the kernel set (threads: the fixture restores them)
        quantcore.set_isa(isa)


def _public_members(mod):
    import inspect

    for name in getattr(mod, "__all__", []):
        obj = getattr(mod, name)
        yield name, obj
        if inspect.isclass(obj):
            for attr, v in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if isinstance(v, property):
                    yield f"{name}.{attr}", v.fget
                elif isinstance(v, (classmethod, staticmethod)):
                    yield f"{name}.{attr}", v.__func__
                elif inspect.isfunction(v):
                    yield f"{name}.{attr}", v


def test_public_names_have_docstrings():
    """Every name quantcore exports, and every public method and property of its
    classes, says what it is (help() and IDEs show it)."""
    import quantcore

    missing = [n for n, obj in _public_members(quantcore)
               if callable(obj) and not (getattr(obj, "__doc__", None) or "").strip()]
    assert not missing, f"public names without a docstring: {missing}"
