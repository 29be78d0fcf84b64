"""The one exception type for user mistakes: the CLI prints it as one line and exits 2."""


class LaunchError(Exception):
    """Bad input: the message names the problem and the fix."""
