"""The docs stand on their own and name only what exists: every `choreo` command in a
Markdown code block is a command of the CLI, the README names exactly the commands without
`--json`, and no file refers to a document outside the repository."""

import os
import re
import sys
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup

from choreo.cli import app, main

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^\s*(```|~~~)")
# `choreo` at the start of a shell command (a line, or after `&&`, `||`, `;`, `|`, `$(`),
# maybe behind a prompt, variable assignments or a path (`.venv/bin/choreo`), or run as
# `python -m choreo`; then the command and, if a bare word follows, what may be its
# sub-command (or a plain argument: `--help` answers 0 for both).
_WORD = r"([a-z][a-z0-9_-]*)(?=\s|$)"
COMMAND = re.compile(
    r"(?:^|&&|\|\||[;|(])\s*(?:\$\s+)?(?:[A-Z_][A-Z0-9_]*=\S*\s+)*"
    r"(?:\S*/)?(?:python[0-9.]*\s+-m\s+)?choreo\s+" + _WORD + r"(?:[ \t]+" + _WORD + r")?"
)
# Documents that live beside the repository, never in it: citing them leaves a reader
# with nothing to open. (Spelled in pieces so that this file does not match itself.)
OUTSIDE = re.compile("|".join([r"\bDESIGN\s*" + "§", r"\bthe " + "DESIGN\b", "PIT" + "FALLS"]))
MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


# What is not the project's own (as .gitignore says): environments, caches, stack state.
NOT_THE_PROJECT = {".git", ".venv", ".choreo", ".peer-venv", "build", "dist", "results"}


def project_files() -> list[Path]:
    files = []
    for directory, subdirectories, names in os.walk(ROOT):
        subdirectories[:] = [
            d
            for d in subdirectories
            if d not in NOT_THE_PROJECT and not d.endswith((".egg-info", "_cache", "__pycache__"))
        ]
        files += [Path(directory, name) for name in names]
    return files


def markdown_files() -> list[Path]:
    return [path for path in project_files() if path.suffix == ".md"]


def commands_in(text: str) -> set[tuple[str, ...]]:
    """`(command,)` or `(command, word)` of every choreo command in fenced code blocks."""
    found: set[tuple[str, ...]] = set()
    in_block = False
    for line in text.splitlines():
        if FENCE.match(line):
            in_block = not in_block
        elif in_block:
            for match in COMMAND.finditer(line):
                found.add(tuple(word for word in match.groups() if word))
    return found


def documented_commands() -> dict[tuple[str, ...], list[str]]:
    """Every command named in a code block, with the files that name it."""
    named: dict[tuple[str, ...], list[str]] = {}
    for path in markdown_files():
        for command in commands_in(path.read_text(encoding="utf-8")):
            named.setdefault(command, []).append(str(path.relative_to(ROOT)))
    return named


DOCUMENTED = documented_commands()


def test_the_command_parser_finds_commands_and_nothing_else() -> None:
    block = "\n".join(
        [
            "```bash",
            ".venv/bin/choreo up --json            # a comment",
            "set -a; . .choreo/env; choreo fraud evaluate tx.ndjson",
            "CHOREO_DATA_DIR=/tmp/x choreo runs && python -m choreo status RUN_ID",
            "choreo get s3://curated/key -o out.json",
            "kubectl -n choreo exec postgres-0 -- psql",
            "```",
            "choreo prose outside a block",
        ]
    )
    assert commands_in(block) == {("up",), ("fraud", "evaluate"), ("runs",), ("status",), ("get",)}
    # The docs do name commands: the parser reads them.
    assert {("run",), ("up",), ("fraud", "evaluate")} <= set(DOCUMENTED)


@pytest.mark.parametrize("command", sorted(DOCUMENTED), ids=" ".join)
def test_every_command_in_a_code_block_exists(
    command: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`choreo <command> [<word>] --help` through the CLI's own entry point answers 0; an
    unknown command or sub-command answers 2."""
    monkeypatch.setattr(sys, "argv", ["choreo", *command, "--help"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0, (
        f"`choreo {' '.join(command)}` (named in {', '.join(DOCUMENTED[command])}) is not a "
        f"command: {capsys.readouterr().err}"
    )


def test_an_unknown_command_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the test above relies on."""
    monkeypatch.setattr(sys, "argv", ["choreo", "no-such-command", "--help"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2


def test_no_file_cites_a_document_outside_the_repository() -> None:
    citing = []
    for path in project_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # not text
        citing += [
            f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
            for n, line in enumerate(text.splitlines(), 1)
            if OUTSIDE.search(line)
        ]
    assert citing == []


def test_every_relative_markdown_link_points_into_the_repository() -> None:
    broken = []
    for path in markdown_files():
        for target in MARKDOWN_LINK.findall(path.read_text(encoding="utf-8")):
            if re.match(r"^[a-z][a-z0-9+.-]*:|^#", target):  # a URL or an anchor
                continue
            resolved = (path.parent / target.split("#", 1)[0]).resolve()
            if not resolved.is_relative_to(ROOT) or not resolved.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert broken == []


def commands_without_json() -> set[str]:
    """Every leaf command of the CLI that has no `--json` option, as `group command`."""
    missing: set[str] = set()
    pending = [("", typer.main.get_command(app))]
    while pending:
        path, command = pending.pop()
        if isinstance(command, TyperGroup):
            context = typer.Context(command)
            for name in command.list_commands(context):
                sub = command.get_command(context, name)
                assert sub is not None
                pending.append((f"{path} {name}".strip(), sub))
        elif not any("--json" in getattr(param, "opts", []) for param in command.params):
            missing.add(path)
    return missing


def test_the_readme_names_every_command_without_json() -> None:
    """The README's list of the commands that do not take `--json` is the CLI's."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("- The commands that print a result take `--json`")
    sentence = readme[start : readme.index("\n\n", start)]
    named = set(re.findall(r"`([a-z][a-z ]*)`", sentence))
    assert named == commands_without_json()
    assert "dev" in named  # the walk reaches the commands (and the parse the sentence)
