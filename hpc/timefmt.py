"""SLURM time limits: parse the formats sbatch accepts, format them back."""

import re

from hpc.errors import LaunchError

_FORMS = (
    # days-hours[:minutes[:seconds]]
    re.compile(r"(?P<d>\d+)-(?P<h>\d+)(?::(?P<m>\d+)(?::(?P<s>\d+))?)?"),
    # hours:minutes:seconds
    re.compile(r"(?P<h>\d+):(?P<m>\d+):(?P<s>\d+)"),
    # minutes:seconds
    re.compile(r"(?P<m>\d+):(?P<s>\d+)"),
    # minutes
    re.compile(r"(?P<m>\d+)"),
)


def parse_time(text: str, what: str = "--time_limit") -> int:
    """Seconds in a SLURM time string ("90", "1:30:00", "2-00:00:00", ...)."""
    value = str(text).strip()
    for form in _FORMS:
        match = form.fullmatch(value)
        if match:
            d, h, m, s = (int(match.groupdict().get(k) or 0) for k in "dhms")
            minutes_bounded = "h" in match.groupdict()
            if s >= 60 or (minutes_bounded and m >= 60) or ("d" in match.groupdict() and h >= 24):
                break
            seconds = ((d * 24 + h) * 60 + m) * 60 + s
            if seconds > 0:
                return seconds
            break
    raise LaunchError(
        f"{what} {text!r} is not a SLURM time; use HH:MM:SS, D-HH:MM:SS or minutes (e.g. 04:00:00)"
    )


def format_time(seconds: int) -> str:
    """SLURM's canonical form: HH:MM:SS, or D-HH:MM:SS from one day up."""
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{clock}" if days else clock
