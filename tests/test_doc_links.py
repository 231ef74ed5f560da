"""Every path, module and link the repository's texts name exists in it, and none names a document
outside it: docs, README, docstrings, comments, messages and every tool's --help (tests/doc_links.py)."""
from __future__ import annotations

import importlib
import importlib.util
import sys
import tomllib
from pathlib import Path

import pytest

from tests.doc_links import ROOT, captured_parser, check_text, parser_helps, python_texts

DOCS = sorted([ROOT / "README.md", *ROOT.glob("docs/**/*.md")])
PYTHON = sorted(p for p in ROOT.rglob("*.py") if not any(x.startswith(".") for x in p.relative_to(ROOT).parts))
OTHER = sorted([*ROOT.glob("pfc_mx/csrc/*"), *ROOT.glob("scripts/*"), *ROOT.glob("configs/*.yaml"),
                ROOT / "Makefile", ROOT / "pyproject.toml", ROOT / "constraints.txt"])
# Files another change is rewriting, which name the team's design document until it lands:
# remove an entry once its file is fixed (the test fails while an entry is no longer needed).
PENDING: dict = {}  # files still to point into docs/design.md: {path: the reference they should give}
TOOLS = sorted(p.stem for p in (ROOT / "tools").glob("*.py")
               if "def main(" in p.read_text() or "import main" in p.read_text())


def tool_mains():
    """(name, main, args) of every command a user runs: tools/*.py, train_horovod.py, the console
    scripts of pyproject.toml and `python -m pfc_mx.kernels`."""
    if str(ROOT / "tools") not in sys.path:
        sys.path.insert(0, str(ROOT / "tools"))
    out = [(f"tools/{name}.py", importlib.import_module(name).main, ([],)) for name in TOOLS]
    spec = importlib.util.spec_from_file_location("train_horovod", ROOT / "train_horovod.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    out.append(("train_horovod.py", train.main, ([],)))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for command, target in sorted(scripts.items()):
        module, function = target.split(":")
        out.append((command, getattr(importlib.import_module(module), function), ()))
    out.append(("python -m pfc_mx.kernels", importlib.import_module("pfc_mx.kernels").main, ([],)))
    return out


def test_docs_and_readme_name_only_what_exists():
    problems = []
    for md in DOCS:
        problems += check_text(md.read_text(), str(md.relative_to(ROOT)), folder=md.parent)
    assert not problems, "\n".join(problems)


def test_docstrings_comments_and_messages_name_only_what_exists():
    problems, pending = [], set()
    for py in PYTHON:
        name = str(py.relative_to(ROOT))
        for line, text, prose in python_texts(py):
            found = check_text(text, f"{name}:{line}", modules=prose)
            if name in PENDING and all("design document" in p or "outside the repository" in p for p in found):
                pending.update([name] if found else [])
                continue
            problems += found
    assert not problems, "\n".join(problems)
    assert pending == set(PENDING), f"fixed, remove from PENDING: {sorted(set(PENDING) - pending)}"


def test_sources_scripts_configs_and_build_files_name_only_what_exists():
    problems = []
    for path in OTHER:
        problems += check_text(path.read_text(), str(path.relative_to(ROOT)), modules=False)
    assert not problems, "\n".join(problems)


def test_every_tools_help_names_only_what_exists():
    problems, seen = [], 0
    for name, main, args in tool_mains():
        for command, text in parser_helps(captured_parser(main, *args), name):
            problems += check_text(text, f"{command} --help")
            seen += 1
    assert not problems, "\n".join(problems)
    assert seen >= len(TOOLS) + 8  # rec's sub-commands and the console scripts were reached


def test_the_readme_docs_list_leads_to_the_design_document():
    docs_section = (ROOT / "README.md").read_text().split("## Docs", 1)[1].split("\n## ", 1)[0]
    assert "(docs/design.md)" in docs_section
    assert (ROOT / "docs" / "design.md").is_file()


# ------------------------------------------------------------------ the checker itself
def test_a_planted_broken_path_module_link_or_section_is_caught(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# Page\n\n## The distributed contract\n")
    (tmp_path / "pfc_mx").mkdir()
    (tmp_path / "pfc_mx" / "__init__.py").write_text("")
    (tmp_path / "pfc_mx" / "dist.py").write_text("STOP = 'pfc_mx.stop_flag'\n\n\ndef allreduce():\n    pass\n")
    sound = ("See docs/page.md, `pfc_mx/dist.py`, pfc_mx.dist.allreduce, [the contract](page.md#the-distributed-"
             "contract), tools/<name>.py, configs/*.yaml, insightface's recognition/arcface_torch/docs/x.md and "
             "the collective pfc_mx.stop_flag.")
    assert check_text(sound, "t", base=tmp_path, folder=tmp_path / "docs") == []
    planted = {"docs/pgae.md": "docs/pgae.md does not exist",
               "pfc_mx/dist/allreduce.py": "pfc_mx/dist/allreduce.py does not exist",
               "see tests/test_nothing.py.": "tests/test_nothing.py does not exist",
               "pfc_mx.distt": "pfc_mx.distt: pfc_mx/__init__.py has no distt",
               "pfc_mx.dist.broadcast": "pfc_mx.dist.broadcast: pfc_mx/dist.py has no broadcast",
               "[x](nowhere.md)": "link nowhere.md: nowhere.md does not exist",
               "[x](page.md#section-4)": "link page.md#section-4: page.md has no section #section-4",
               "the team's DESIGN" + ".md §4": "names the team's design document",
               "../" + "shared/STYLE.md": "names a folder outside the repository"}
    for text, needle in planted.items():
        found = check_text(text, "t", base=tmp_path, folder=tmp_path / "docs")
        assert len(found) == 1 and needle in found[0], (text, found)


def test_the_help_of_a_parser_and_its_subcommands_is_read_without_running_the_tool():
    import argparse
    ran = []

    def main(argv=None):
        p = argparse.ArgumentParser(description="see docs/nowhere.md")
        p.add_subparsers(dest="cmd").add_parser("go", help="x", description="tools/gone.py")
        p.parse_args(argv)
        ran.append(True)

    helps = dict(parser_helps(captured_parser(main, []), "t"))
    assert set(helps) == {"t", "t go"} and not ran
    assert [len(check_text(text, name)) for name, text in helps.items()] == [1, 1]


@pytest.mark.parametrize("heading, anchor", [("## 4. Data formats", "4-data-formats"),
                                             ("## The distributed contract", "the-distributed-contract"),
                                             ("### `state.json`, field by field", "statejson-field-by-field")])
def test_anchors_are_githubs(heading, anchor):
    from tests.doc_links import anchors
    assert anchors(heading + "\n") == [anchor]
