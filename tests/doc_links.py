"""Find what the repository's texts name that is not in the repository: paths, modules, links, sections.

    problems = check_text(text, where="README.md")    # ["README.md: docs/<page>.md does not exist", ...]

The texts: docs/**/*.md and README.md; the docstrings and comments of every Python file (and,
outside tests/, every string literal: error messages and help texts); the --help of every tool
(tools/*.py, train_horovod.py, the console scripts of pyproject.toml, `python -m pfc_mx.kernels`).
A path is a word that starts with one of the repository's top-level folders (docs/, pfc_mx/,
tools/, configs/, tests/, scripts/, symbols/); a module is pfc_mx.<module>[.<name>] or
symbols.<module> (its last part may be a name the module defines; a name the code writes as a
whole string, such as a collective's, counts too); a link is a Markdown link
to a relative file, with its #section when it has one. Placeholders (`tools/<name>.py`,
`configs/*.yaml`) are not checked; a path of another project is written with its own prefix
(insightface's `recognition/arcface_torch/configs/...`), which is not one of ours. Documents
outside the repository must not be named at all.
"""
from __future__ import annotations

import argparse
import ast
import functools
import io
import re
import tokenize
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("docs", "pfc_mx", "tools", "configs", "tests", "scripts", "symbols")
PATH = re.compile(r"(?<![\w./~$-])((?:%s)/[\w./-]*)" % "|".join(FOLDERS))
MODULE = re.compile(r"(?<![\w./-])((?:pfc_mx|symbols)(?:\.[A-Za-z_]\w*)+)")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
PLACEHOLDER = "<*{$["  # a path that goes on with one of these is a pattern, not a file
FOREIGN = [(re.compile(r"DESIGN\.md"), "the team's design document, which users do not have (use docs/design.md)"),
           (re.compile(r"(?<![\w-])shared/"), "a folder outside the repository (shared/)")]


def _path_problems(text: str, base: Path) -> Iterator[str]:
    for m in PATH.finditer(text):
        token, after = m.group(1), text[m.end():m.end() + 1]
        if after and after in PLACEHOLDER:
            continue
        token = token.rstrip(".")
        if not (base / token.rstrip("/")).exists():
            yield f"{token} does not exist"


@functools.lru_cache(maxsize=None)
def quoted_names(base: Path) -> frozenset:
    """Dotted names the code under base writes as whole string literals ("pfc_mx.pfc.labels": the
    name of a collective, a logger): they exist in the repository although no module has them."""
    found = set()
    for py in base.rglob("*.py"):
        if not any(x.startswith(".") for x in py.relative_to(base).parts):
            found.update(re.findall(r"""["']((?:pfc_mx|symbols)(?:\.\w+)+)["']""", py.read_text()))
    return frozenset(found)


def _module_problems(text: str, base: Path) -> Iterator[str]:
    for m in MODULE.finditer(text):
        if m.group(1).rstrip(".") in quoted_names(base):
            continue
        parts = m.group(1).rstrip(".").split(".")
        path, i = base / parts[0], 1
        while i < len(parts) and ((path / parts[i]).is_dir() or (path / f"{parts[i]}.py").is_file()):
            path, i = path / parts[i], i + 1
        if i == len(parts):
            continue
        source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        name = parts[i]
        if not re.search(rf"\b{re.escape(name)}\b", source.read_text()):
            yield f"{m.group(1)}: {source.relative_to(base)} has no {name}"


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as '-'."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: str) -> List[str]:
    """The anchors of a Markdown file's headings (outside code blocks)."""
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            out.append(slug(line.lstrip("#")))
    return out


def _link_problems(text: str, folder: Path) -> Iterator[str]:
    for m in LINK.finditer(text):
        target = m.group(1)
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        name, _, section = target.partition("#")
        path = folder / name
        if name and not path.exists():
            yield f"link {target}: {name} does not exist"
        elif section and (not name or path.suffix == ".md"):
            if section not in anchors(path.read_text() if name else text):
                yield f"link {target}: {name or 'this page'} has no section #{section}"


def check_text(text: str, where: str, base: Path = ROOT, folder: Optional[Path] = None,
               modules: bool = True) -> List[str]:
    """Problems of one text: paths (and, with modules, pfc_mx / symbols modules) missing under
    base, broken Markdown links (relative to folder, default base), documents outside the
    repository. Each as 'where: what'."""
    found = list(_path_problems(text, base)) + (list(_module_problems(text, base)) if modules else [])
    found += list(_link_problems(text, folder or base))
    found += [f"names {why}" for pattern, why in FOREIGN if pattern.search(text)]
    return [f"{where}: {p}" for p in found]


def python_texts(path: Path) -> Iterator[Tuple[int, str, bool]]:
    """(line, text, prose) of a Python file's comments and docstrings (prose True) and, outside
    tests/, its other string literals (prose False: messages and help; also names such as Horovod's
    tensor names, which look like modules, so only their paths are checked)."""
    source = path.read_text()
    every_string = path.relative_to(ROOT).parts[0] != "tests"
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and \
                    isinstance(first.value.value, str):
                docstrings.add(first.lineno)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT or (tok.type == tokenize.STRING and tok.start[0] in docstrings):
            yield tok.start[0], tok.string, True
        elif tok.type == tokenize.STRING and every_string:
            yield tok.start[0], tok.string, False


def parser_helps(parser: argparse.ArgumentParser, name: str) -> Iterator[Tuple[str, str]]:
    """(name, --help text) of a parser and of each of its sub-commands."""
    yield name, parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, child in action.choices.items():
                yield from parser_helps(child, f"{name} {sub}")


class _Captured(BaseException):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def captured_parser(main, *args) -> argparse.ArgumentParser:
    """The ArgumentParser a tool's main() builds, caught at parse_args (nothing else of the tool runs)."""
    real = argparse.ArgumentParser.parse_args

    def catch(self, *a, **kw):
        raise _Captured(self)
    argparse.ArgumentParser.parse_args = catch
    try:
        main(*args)
    except _Captured as c:
        return c.parser
    finally:
        argparse.ArgumentParser.parse_args = real
    raise AssertionError(f"{main} returned without parsing arguments")
