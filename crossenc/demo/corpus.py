"""(query, passage) pairs from the Python standard library's documentation strings.

The standard library ships with every Python, so the demo model can be built offline. Its
docstrings are real English: a summary sentence followed by an explanation. The summary is
the query and the explanation its relevant passage. Sources are parsed with `ast`, never
imported, so no module's import side effects run (some open windows or browsers).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

# Not documentation prose: test suites, IDE and demo code, a bundled third-party library.
_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages", "__pycache__"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`'\"(])")
_MIN_QUERY_WORDS, _MAX_QUERY_WORDS = 3, 30
# Passages are cut to a few sentences' length: short pairs keep the build within minutes.
_MIN_PASSAGE_WORDS, _MAX_PASSAGE_WORDS = 10, 24


@dataclass(frozen=True)
class Pair:
    source: str  # module path relative to the standard library, e.g. "email/utils.py"
    query: str
    passage: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _source_files(root: Path) -> list[Path]:
    files = (p for p in root.rglob("*.py") if not _SKIP_DIRS & set(p.relative_to(root).parts))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _prose(docstring: str) -> str:
    """The docstring's paragraphs as one line, without doctest examples."""
    paragraphs = []
    for paragraph in docstring.split("\n\n"):
        lines = [line.strip() for line in paragraph.splitlines()]
        if any(line.startswith(">>>") for line in lines):
            continue
        paragraphs.append(" ".join(line for line in lines if line))
    return " ".join(p for p in paragraphs if p)


def _pair(source: str, docstring: str) -> Pair | None:
    sentences = _SENTENCE_END.split(_prose(docstring), maxsplit=1)
    if len(sentences) < 2:
        return None
    query, rest = sentences[0], sentences[1].split()
    if not (_MIN_QUERY_WORDS <= len(query.split()) <= _MAX_QUERY_WORDS) or len(rest) < _MIN_PASSAGE_WORDS:
        return None
    return Pair(source, query, " ".join(rest[:_MAX_PASSAGE_WORDS]))


def stdlib_pairs(root: Path | None = None) -> list[Pair]:
    """Every usable docstring pair, in a fixed order, without repeated queries or passages (read
    once per process: parsing the library takes seconds)."""
    return list(_stdlib_pairs(root or stdlib_root()))


@functools.lru_cache(maxsize=4)
def _stdlib_pairs(root: Path) -> tuple[Pair, ...]:
    pairs, seen = [], set()
    for path in _source_files(root):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        source = path.relative_to(root).as_posix()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            docstring = ast.get_docstring(node)
            pair = _pair(source, docstring) if docstring else None
            if pair is None or pair.query.lower() in seen or pair.passage.lower() in seen:
                continue
            seen.update((pair.query.lower(), pair.passage.lower()))
            pairs.append(pair)
    return tuple(pairs)


def top_module(source: str) -> str:
    """"email/utils.py" -> "email"; "_pyio.py" -> "io" (a private twin shares its public module's docs)."""
    name = source.split("/")[0].removesuffix(".py")
    return name.lstrip("_") or name


def is_held_out(source: str, held_out_percent: int) -> bool:
    """Held-out pairs come from whole top-level modules, so no module is in both splits."""
    digest = hashlib.sha256(top_module(source).encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < held_out_percent


def split(pairs: list[Pair], held_out_percent: int) -> tuple[list[Pair], list[Pair]]:
    train = [p for p in pairs if not is_held_out(p.source, held_out_percent)]
    held_out = [p for p in pairs if is_held_out(p.source, held_out_percent)]
    return train, held_out
