"""Errors a user sees: one line on stderr and an exit code, never a traceback."""

import re
import sys
from collections.abc import Callable

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_NAMED = {"\r": "\\r", "\n": "\\n"}


def printable(text: str, lines: bool = False) -> str:
    """`text` safe for a terminal: control characters (ESC, CR, ...) shown escaped; line breaks too unless `lines`."""
    text = _CONTROL.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}"), text)
    return text if lines else text.replace("\n", "\\n")


class LaunchError(Exception):
    """Bad input: the message names the problem and the fix, always on one line (a user value with a line
    break or another control character in it is shown escaped)."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(printable(message))


class BackendError(LaunchError):
    """The scheduler or cloud refused or failed a command (sbatch, squeue, SkyPilot's API); the message carries its
    own words. Every backend raises this one type, and the verbs catch it."""

    exit_code = 1


def run_reporting(prog: str, action: Callable[[], int]) -> int:
    """Run a command-line action, turning our errors into one line and their exit code."""
    try:
        return action()
    except LaunchError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
