import pytest

from hpc.errors import LaunchError
from hpc.timefmt import format_time, parse_time


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("90", 5400),
        ("30:00", 1800),
        ("1:30:00", 5400),
        ("04:00:00", 14400),
        ("25:00:00", 90000),
        ("1-12", 129600),
        ("2-00:30", 174600),
        ("2-00:00:00", 172800),
    ],
)
def test_parse_accepts_every_slurm_form(text, seconds):
    assert parse_time(text) == seconds


@pytest.mark.parametrize("text", ["0", "", "abc", "1:70:00", "1-25", "1:00:61", "-1", "4h"])
def test_parse_rejects_with_the_fix(text):
    with pytest.raises(LaunchError, match="is not a SLURM time; use HH:MM:SS"):
        parse_time(text)


@pytest.mark.parametrize("seconds, text", [(59, "00:00:59"), (5400, "01:30:00"), (90000, "1-01:00:00")])
def test_format_round_trips(seconds, text):
    assert format_time(seconds) == text
    assert parse_time(text) == seconds
