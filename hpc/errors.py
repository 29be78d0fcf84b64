"""Errors a user sees: one line on stderr and an exit code, never a traceback."""

import sys
from collections.abc import Callable


class LaunchError(Exception):
    """Bad input: the message names the problem and the fix, always on one line (a user value with a line
    break in it is shown escaped)."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))


class SlurmError(LaunchError):
    """SLURM refused or failed a command; the message carries SLURM's own words."""

    exit_code = 1


def run_reporting(prog: str, action: Callable[[], int]) -> int:
    """Run a command-line action, turning our errors into one line and their exit code."""
    try:
        return action()
    except LaunchError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
