"""Every ``ablate ...`` command shown in README.md and docs/ parses: its subcommand exists and takes its options.

Each fenced code block of README.md and docs/**/*.md is read line by line (a line ending in ``\\`` joins
the next). A line that starts with ``ablate `` (after an optional ``$ `` prompt and ``VAR=value``
assignments) is split as a shell would (``#`` starts a comment) and parsed by click on
``ablations.cli:main`` exactly as the command line would be, without running anything: an unknown
subcommand or option, a missing argument or a bad value fails. Placeholders such as ``STUDY`` or
``RUN_ID`` are ordinary arguments.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from ablations.cli import main

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def fenced_lines(text: str):
    """(line number, line) of every line inside a fenced block, continuation lines joined."""
    fence = None
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None:
            if m:
                fence = m.group(1)
            continue
        if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not line.strip()[len(fence) :]:
            fence = None
            pending = ""
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""


def ablate_commands(path: Path, root: Path = ROOT) -> list[tuple[str, list[str]]]:
    """(where, argv after ``ablate``) of each ``ablate`` command in the fenced blocks of ``path``."""
    found = []
    for number, line in fenced_lines(path.read_text(encoding="utf-8")):
        text = line.strip()
        if text.startswith("$ "):
            text = text[2:].lstrip()
        if not (text.startswith("ablate ") or ASSIGNMENT.match(text)):
            continue
        try:
            words = shlex.split(text, comments=True)
        except ValueError as exc:  # unbalanced quotes: a command a shell would not take either
            words = ["ablate", f"<{exc}: {text}>"] if text.startswith("ablate ") else []
        while words and ASSIGNMENT.match(words[0]):
            words.pop(0)
        if words and words[0] == "ablate":
            found.append((f"{path.relative_to(root)}:{number}", words[1:]))
    return found


COMMANDS = [c for path in doc_files() for c in ablate_commands(path)]


def parse(argv: list[str]) -> None:
    """Parse ``ablate ARGV`` with click as the command line would, running nothing."""
    ctx = click.Context(main, info_name="ablate")
    name, *rest = argv
    command = main.get_command(ctx, name)
    if command is None:
        raise click.UsageError(f"no such command {name!r}; commands: {', '.join(main.list_commands(ctx))}")
    with command.make_context(name, rest, parent=ctx, resilient_parsing=False):
        pass


def test_the_docs_show_many_commands():
    assert len(COMMANDS) >= 10, COMMANDS
    shown = {argv[0] for _, argv in COMMANDS if argv}
    assert {"run", "report", "ui"} <= shown, shown


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_command_parses(where, argv):
    assert argv, f"{where}: 'ablate' without a subcommand"
    try:
        parse(argv)
    except click.exceptions.Exit:  # --help or --version: parsed
        pass
    except click.ClickException as exc:
        pytest.fail(f"{where}: ablate {shlex.join(argv)}: {exc.format_message()}")


def test_an_unknown_option_fails():
    with pytest.raises(click.UsageError, match="--nope"):
        parse(["run", "studies/batchnorm.yaml", "--nope"])
    with pytest.raises(click.UsageError, match="frobnicate"):
        parse(["frobnicate"])


def test_fenced_lines_join_continuations_and_skip_prose(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text(
        "ablate run prose.yaml --not-parsed\n\n"
        "```\n$ ablate run a.yaml \\\n    --profile quick   # a comment\nablate: not a command\n```\n"
        "````markdown\n```\nABLATE_DATA=x ablate report a\n```\n````\n",
        encoding="utf-8",
    )
    found = ablate_commands(doc, root=tmp_path)
    assert found == [("x.md:4", ["run", "a.yaml", "--profile", "quick"]), ("x.md:10", ["report", "a"])]
