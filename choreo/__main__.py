"""`python -m choreo`: the same as the `choreo` command."""

from choreo.cli import main

main()
