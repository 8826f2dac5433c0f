"""Every ```python block of README.md and docs/*.md runs as written, and shows true output.

Conventions (for everyone who writes a page):

* The blocks of one page run in page order in one namespace, as a reader would
  paste them into one interpreter; each page starts from an empty namespace.
* A block whose first line starts with ``>>>`` is a doctest: every output it
  shows is compared (whitespace-normalized, ``...`` matches anything).
* A plain block followed directly by a ```text block prints exactly that text.
* Any other block shows no output: a comment that looks like a printed array
  (``# array(...``, ``# tensor(...``) is an unchecked output and fails the test.
* The line ``<!-- docs-test: skip: REASON -->`` just before a block skips it
  visibly (it only illustrates: it needs a GPU, a download, ...); later blocks
  must not depend on it.
* A block that imports a framework (torch, jax, flax, equinox, transformers,
  dask, array_api_strict, cupy) runs in the test session of that backend
  (``EVSOFTMAX_TEST_BACKENDS``) and skips visibly elsewhere, as do the later
  blocks of its page.
"""

from __future__ import annotations

import ast
import contextlib
import doctest
import functools
import importlib.util
import io
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .backends import selected

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[ \t]*$")
_SKIP = re.compile(r"^\s*<!--\s*docs-test:\s*skip:\s*(?P<reason>.+?)\s*-->\s*$")
_UNCHECKED_OUTPUT = re.compile(r"#\s*(array|tensor|Array|DeviceArray)\(")
# Top-level module -> the backend session that installs it.
_BACKEND_OF = {
    "torch": "torch",
    "jax": "jax",
    "flax": "jax",
    "equinox": "jax",
    "transformers": "torch",
    "optax": "jax",
    "dask": "dask",
    "array_api_strict": "array_api_strict",
    "cupy": "cupy",
}


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    code: str
    skip: str | None = None  # the reason given by a skip marker
    expected: str | None = None  # the ```text block right after it
    modules: set[str] = field(default_factory=set)

    @property
    def doctest(self) -> bool:
        return self.code.lstrip().startswith(">>>")


def _fenced(lines: list[str]) -> list[tuple[int, str, str, int]]:
    """(opening line index, language, dedented body, closing line index) of every fence."""
    found = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None or not match["lang"]:
            i += 1
            continue
        indent, end = match["indent"], i + 1
        while end < len(lines) and lines[end].rstrip() != f"{indent}```":
            end += 1
        body = textwrap.dedent("\n".join(lines[i + 1 : end]))
        found.append((i, match["lang"], body + "\n", end))
        i = end + 1
    return found


def _imports(code: str) -> set[str]:
    if code.lstrip().startswith(">>>"):
        code = "".join(example.source for example in doctest.DocTestParser().get_examples(code))
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@functools.cache
def blocks(page: Path) -> list[Block]:
    """The page's ```python blocks with their skip markers and expected output."""
    lines = page.read_text().splitlines()
    fences = _fenced(lines)
    found: list[Block] = []
    for n, (start, lang, body, end) in enumerate(fences):
        if lang != "python":
            continue
        before = next((line for line in reversed(lines[:start]) if line.strip()), "")
        marker = _SKIP.match(before)
        block = Block(page, start + 1, body, skip=marker["reason"] if marker else None)
        if n + 1 < len(fences) and fences[n + 1][1] == "text":
            following = fences[n + 1][0]
            if all(not line.strip() for line in lines[end + 1 : following]):
                block.expected = fences[n + 1][2]
        if block.skip is None:
            block.modules = _imports(body)
        found.append(block)
    return found


def _names(code: str) -> tuple[set[str], set[str]]:
    """(names the block binds, names it reads before binding them itself)."""
    if code.lstrip().startswith(">>>"):
        code = "".join(example.source for example in doctest.DocTestParser().get_examples(code))
    bound: set[str] = set()
    read: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name):
            (bound if isinstance(node.ctx, ast.Store) else read).add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return bound, read - bound


def _plan(page_blocks: list[Block]) -> list[str | None]:
    """Why each block of a page is skipped in this session (None: it runs).

    A block that needs a framework this session lacks is skipped, and so is a
    later block that reads a name only such a skipped block defines.
    """
    reasons: list[str | None] = []
    defined: set[str] = set()  # by blocks that run
    lost: dict[str, int] = {}  # name -> line of the skipped block that defines it
    for block in page_blocks:
        bound, free = _names(block.code)
        reason = f"marked in the page: {block.skip}" if block.skip else _missing_backend(block)
        if reason is None:
            needed = sorted((free - defined) & set(lost))
            if needed:
                reason = f"uses {needed[0]} from the skipped block at line {lost[needed[0]]}"
        if reason is None:
            defined |= bound
        elif block.skip is None:
            lost.update(dict.fromkeys(bound - defined, block.line))
        reasons.append(reason)
    return reasons


def _missing_backend(block: Block) -> str | None:
    """Why a block cannot run in this session (a framework not selected or installed)."""
    for module in sorted(block.modules):
        backend = _BACKEND_OF.get(module)
        if backend is not None and backend not in selected():
            return f"needs {module}: runs in the tests-{backend} session"
        if importlib.util.find_spec(module) is None:
            return f"needs {module}, which is not installed"
    return None


def _normalized(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.strip().splitlines()]


def _run(block: Block, namespace: dict[str, object]) -> None:
    where = f"{block.page.relative_to(ROOT)}:{block.line}"
    if block.doctest:
        test = doctest.DocTestParser().get_doctest(
            block.code, namespace, where, str(block.page), block.line
        )
        report = io.StringIO()
        flags = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
        runner = doctest.DocTestRunner(optionflags=flags)
        runner.run(test, out=report.write, clear_globs=False)
        assert runner.failures == 0, f"{where}: shown output differs\n{report.getvalue()}"
        return
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exec(compile(block.code, where, "exec"), namespace)
    if block.expected is not None:
        assert _normalized(stdout.getvalue()) == _normalized(block.expected), (
            f"{where}: printed\n{stdout.getvalue()}\nbut the page shows\n{block.expected}"
        )


# Page -> (blocks run so far, their namespace): a block's test reuses the page's
# namespace when the earlier blocks already ran in this process, else replays them.
_STATE: dict[Path, tuple[int, dict[str, object]]] = {}


def _namespace_before(page: Path, index: int) -> dict[str, object]:
    page_blocks = blocks(page)
    plan = _plan(page_blocks)
    done, namespace = _STATE.pop(page, (0, {}))
    if done > index:
        done, namespace = 0, {}
    for i in range(done, index):
        if plan[i] is None:
            _run(page_blocks[i], namespace)  # on failure the page's state is dropped
    return namespace


# A page's blocks stay on one xdist worker (``--dist loadgroup``, as the nox sessions
# run), so that no worker replays the blocks another one ran.
_CASES = [
    pytest.param(
        page,
        i,
        id=f"{page.relative_to(ROOT)}:{block.line}",
        marks=pytest.mark.xdist_group(f"docs:{page.name}"),
    )
    for page in PAGES
    for i, block in enumerate(blocks(page))
]


@pytest.mark.parametrize(("page", "index"), _CASES)
def test_docs_block(page: Path, index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    block = blocks(page)[index]
    unchecked = [
        line
        for line in block.code.splitlines()
        if not block.doctest and _UNCHECKED_OUTPUT.search(line)
    ]
    assert not unchecked, f"output shown in a comment is not checked; print it: {unchecked}"
    reason = _plan(blocks(page))[index]
    if reason is not None:
        pytest.skip(reason)
    namespace = _namespace_before(page, index)
    _run(block, namespace)
    _STATE[page] = (index + 1, namespace)


def test_every_page_is_collected() -> None:
    assert {p.name for p in PAGES} >= {"README.md", "index.md", "getting-started.md", "jax.md"}
    assert sum(len(blocks(page)) for page in PAGES) >= 20


def _shell_commands(page: Path) -> list[str]:
    lines = page.read_text().splitlines()
    return [
        line.split("#", 1)[0].strip()
        for _start, lang, body, _end in _fenced(lines)
        if lang == "bash"
        for line in body.splitlines()
        if line.split("#", 1)[0].strip()
    ]


def test_install_commands_name_real_extras_and_subcommands() -> None:
    # The shell blocks cannot run here (they install); check what they refer to exists.
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    from evsoftmax.cli import _parser

    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    subcommands = set(_parser()[1])
    for page in (ROOT / "README.md", ROOT / "docs" / "getting-started.md"):
        for command in _shell_commands(page):
            for group in re.findall(r'"\.\[([\w,-]+)\]"', command):
                assert set(group.split(",")) <= extras, (page.name, command)
            for name in re.findall(r"(?:^|&& |python -m )evsoftmax (\w+)", command):
                assert name in subcommands, (page.name, command)
