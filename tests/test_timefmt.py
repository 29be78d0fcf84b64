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


@pytest.mark.parametrize("text, seconds", [
    ("0:01", 1),  # the shortest limit there is
    ("0:59", 59),
    ("90:00", 5400),  # minutes:seconds: the minutes are not bounded by 60
    ("1:59:59", 7199),
    ("0-23:59:59", 86399),
    ("1-23:59", 172740),
])
def test_parse_accepts_up_to_each_boundary(text, seconds):
    assert parse_time(text) == seconds


@pytest.mark.parametrize("text", ["0:60", "1:60:00", "1:00:60", "1-24:00:00", "1-24", "1-00:60", "0-00:00:00", "0:00"])
def test_parse_refuses_sixty_seconds_sixty_minutes_twenty_four_hours_and_zero(text):
    with pytest.raises(LaunchError, match="is not a SLURM time"):
        parse_time(text)


def test_a_bad_time_names_the_option_it_came_from():
    with pytest.raises(LaunchError) as err:
        parse_time("4h")
    assert str(err.value).startswith("--time_limit '4h' is not a SLURM time; use HH:MM:SS, D-HH:MM:SS or minutes")
    with pytest.raises(LaunchError) as err:
        parse_time("4h", what="server time limit")
    assert str(err.value).startswith("server time limit '4h' is not a SLURM time")
