"""Prints the figure table of the chaos scenarios that ran (also in bench/results/chaos.json)."""

from dataclasses import asdict, fields

import pytest

from tests.chaos.harness import SESSION_ROWS, Row


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not SESSION_ROWS:
        return
    names = [f.name for f in fields(Row)]
    terminalreporter.section("chaos figures")
    terminalreporter.write_line(" | ".join(names))
    for row in SESSION_ROWS:
        terminalreporter.write_line(" | ".join(str(v) for v in asdict(row).values()))
