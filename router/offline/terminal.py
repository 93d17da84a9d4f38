"""Where the commands' tables are printed: a rich Console as wide as the terminal, or, into a
pipe or a file, as wide as the widest table needs (rich would otherwise cut at 80 columns)."""

from __future__ import annotations

import os
from typing import IO

from rich.console import Console

# Wider than any table the commands print: a table takes its natural width, so this only
# lifts rich's 80-column default for output that is not a terminal.
PIPE_WIDTH = 10_000


def table_console(*, stderr: bool = False, file: IO[str] | None = None) -> Console:
    """A Console for tables; `COLUMNS` in the environment still sets the width when given."""
    console = Console(stderr=stderr, file=file)
    if console.is_terminal or "COLUMNS" in os.environ:
        return console
    return Console(stderr=stderr, file=file, width=PIPE_WIDTH)
