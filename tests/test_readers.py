"""hpc.readers: every I/O, encoding, syntax, size and shape problem is one LaunchError line naming the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpc import yamlio
from hpc.errors import LaunchError
from hpc.readers import CONFIG_LIMIT, read_json, read_text, read_yaml


def _error(call, *args, **kwargs) -> str:
    with pytest.raises(LaunchError) as err:
        call(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


def _write(tmp_path: Path, content: str | bytes, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def test_missing_directory_and_unreadable(tmp_path):
    assert _error(read_yaml, tmp_path / "nope.yaml", "train config", "check --train_config_path") == (
        f"train config {tmp_path / 'nope.yaml'} does not exist; check --train_config_path")
    assert _error(read_yaml, tmp_path, "train config", "check --train_config_path") == (
        f"train config {tmp_path} is a directory, not a file; check --train_config_path")
    assert "is not a usable path" in _error(read_text, Path("a\0b"), "dotenv file", "fix it")


def test_not_utf8_names_the_fix_and_a_bom_is_fine(tmp_path):
    path = _write(tmp_path, b"model: caf\xe9\n")
    assert _error(read_yaml, path, "train config", "x") == (
        f"train config {path} is not UTF-8 text (byte 10 is not); save it as UTF-8")
    assert read_yaml(_write(tmp_path, "\ufeffa: 1\n"), "train config", "x") == {"a": 1}


def test_a_huge_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as out:
        out.truncate(50 * 1024 * 1024)  # 50 MB (sparse: nothing to read, and nothing must be)
    message = _error(read_yaml, path, "train config", "x")
    assert message == (f"train config {path} has 52,428,800 bytes, more than the {CONFIG_LIMIT:,} a train config may "
                       "have; is it the right file?")


def test_a_device_pipe_or_socket_is_refused_without_blocking(tmp_path):
    """A FIFO with no writer would block open() and read() forever; it is refused at once (a test hang is a fail)."""
    import socket

    assert _error(read_text, Path("/dev/zero"), "dotenv file", "x") == (
        "dotenv file /dev/zero is a device, not a regular file; save it as a file and x")
    fifo = tmp_path / "train.yaml"
    os.mkfifo(fifo)
    assert _error(read_yaml, fifo, "train config", "check --train_config_path") == (
        f"train config {fifo} is a pipe, not a regular file; save it as a file and check --train_config_path")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "s"))
        assert "is a socket, not a regular file" in _error(read_text, tmp_path / "s", "dotenv file", "x")


def test_yaml_refuses_nan_and_infinity(tmp_path):
    for text in ("learning_rate: .nan\n", "lr: -.inf\n", "a: [1, .Inf]\n"):
        assert "which is not a usable number" in _error(read_yaml, _write(tmp_path, text), "train config", "x")
    assert read_yaml(_write(tmp_path, "lr: 1.0e-5\nb: .5\n"), "train config", "x") == {"lr": 1e-5, "b": 0.5}


@pytest.mark.parametrize("text, problem", [
    ("a: 1\nb: 2\na: 3\n", "found duplicate key 'a' at line 3, column 1"),
    ("a: {x: 1, x: 2}\n", "found duplicate key 'x' at line 1, column 11"),
    ("1: a\ntrue: b\n", "found duplicate key True at line 2, column 1"),  # one Python key: one would be lost
    ("a: &a [*a]\n", "found a recursive alias at line 1, column 4"),
    ("a: [1\n", "did not find expected ',' or ']' at line 2, column 1"),
    ("a: !!python/object:os.system {}\n", "could not determine a constructor for the tag"),
])
def test_strict_yaml(tmp_path, text, problem):
    path = _write(tmp_path, text)
    message = _error(read_yaml, path, "datagen config", "x")
    assert message.startswith(f"datagen config {path} is not valid YAML ({problem}") and message.endswith("fix the YAML")


def test_merge_keys_may_override_and_anchors_are_fine(tmp_path):
    path = _write(tmp_path, "base: &b {x: 1, y: 2}\nrun:\n  <<: *b\n  x: 3\n")
    assert read_yaml(path, "c", "x") == {"base": {"x": 1, "y": 2}, "run": {"x": 3, "y": 2}}


def test_a_billion_laughs_is_refused_at_once(tmp_path):
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
    assert "aliases expand to more than 1000000 nodes" in _error(read_yaml, _write(tmp_path, "\n".join(lines)), "c", "x")


def test_deep_nesting_is_one_line(tmp_path):
    for text in ("[" * 5000 + "]" * 5000, "{a: " * 5000 + "1" + "}" * 5000):
        _error(read_yaml, _write(tmp_path, text), "c", "x")
    _error(read_json, _write(tmp_path, "[" * 100_000 + "]" * 100_000, "d.json"), "manifest", "x")


@pytest.mark.parametrize("text, expect, shape, wrong", [
    ("- a\n- b\n", dict, None, "must be a mapping, not a list"),
    ("just text\n", dict, "a YAML mapping of LLaMA-Factory keys", "must be a YAML mapping of LLaMA-Factory keys, not a string"),
    ("", dict, None, "must be a mapping, not empty"),
    ("a: 1\n", list, None, "must be a list, not a mapping"),
])
def test_wrong_top_level_type(tmp_path, text, expect, shape, wrong):
    assert wrong in _error(read_yaml, _write(tmp_path, text), "c", "x", expect=expect, shape=shape)


def test_empty_yaml_may_mean_an_empty_mapping(tmp_path):
    assert read_yaml(_write(tmp_path, "# nothing yet\n"), "c", "x", empty={}) == {}


@pytest.mark.parametrize("text, problem", [
    ('{"a": 1, "a": 2}', "duplicate key 'a'"),
    ('{"a": NaN}', "NaN is not JSON"),
    ('{"a": 1', "Expecting ',' delimiter at line 1, column 8"),
    ("", "Expecting value at line 1, column 1"),
])
def test_strict_json(tmp_path, text, problem):
    path = _write(tmp_path, text, "r.json")
    assert _error(read_json, path, "run summary", "check --run_summary") == (
        f"run summary {path} is not valid JSON ({problem}); check --run_summary")


def test_json_top_level_type(tmp_path):
    assert "must be a mapping, not a list" in _error(read_json, _write(tmp_path, "[1]", "r.json"), "manifest", "x")
    assert read_json(_write(tmp_path, "[1]", "r.json"), "manifest", "x", expect=list) == [1]


def test_permission_denied_is_one_line():
    """Root reads every file, so as root the reader runs in a forked child that drops to nobody's uid first (the
    interpreter may live where nobody could exec it, so nothing is executed)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp())
    try:
        folder.chmod(0o755)
        path = _write(folder, "a: 1\n")
        path.chmod(0)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            message = "the child failed"
            try:
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                read_yaml(path, "c", "x")
                message = "read it"
            except LaunchError as exc:
                message = str(exc)
            except BaseException as exc:
                message = repr(exc)
            finally:
                os.write(write, message.encode())
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as answer:
            message = answer.read()
        os.waitpid(pid, 0)
        assert message == f"cannot read c {path} (Permission denied); x"
    finally:
        shutil.rmtree(folder)


def test_yamlio_load_is_strict_too():
    import yaml

    with pytest.raises(yaml.YAMLError):
        yamlio.load("a: 1\na: 2\n")
    assert yamlio.load("a: [1, 2]\n") == {"a": [1, 2]}


@pytest.mark.parametrize("text, word", [("true", "a boolean"), ("1.5", "a float"), ('"x"', "a string"),
                                        ("null", "empty"), ("[]", "a list")])
def test_the_wrong_top_level_type_is_named_in_words(tmp_path, text, word):
    path = _write(tmp_path, text, "m.json")
    assert _error(read_json, path, "manifest", "x") == f"manifest {path} must be a mapping, not {word}; fix the file"


def test_a_shape_or_an_unusual_type_is_named_as_asked(tmp_path):
    path = _write(tmp_path, '{"a": 1}', "r.json")
    assert _error(read_json, path, "runs", "x", expect=list, shape="a JSON list of runs") == (
        f"runs {path} must be a JSON list of runs, not a mapping; fix the file")
    assert _error(read_json, path, "runs", "x", expect=int) == f"runs {path} must be int, not a mapping; fix the file"
    yaml_path = _write(tmp_path, "- a\n")
    assert _error(read_yaml, yaml_path, "train config", "x") == (
        f"train config {yaml_path} must be a mapping, not a list; fix the file")


def test_json_objects_are_read_whole(tmp_path):
    text = '{"a": 1, "b": {"c": [2, null], "d": "e"}}'
    assert read_json(_write(tmp_path, text, "r.json"), "manifest", "x") == {"a": 1, "b": {"c": [2, None], "d": "e"}}


def test_read_json_names_the_file_and_the_fix_for_io_problems(tmp_path):
    assert _error(read_json, tmp_path / "none.json", "run summary", "check --run_summary") == (
        f"run summary {tmp_path / 'none.json'} does not exist; check --run_summary")


@pytest.mark.parametrize("reader", [read_text, read_yaml, read_json])
def test_a_file_of_exactly_the_limit_is_read_whole_and_one_byte_more_is_refused(tmp_path, reader):
    path = _write(tmp_path, '["abcdef"]', "f.json")  # 10 bytes: a YAML list and a JSON list
    whole = {read_text: '["abcdef"]', read_yaml: ["abcdef"], read_json: ["abcdef"]}[reader]
    assert reader(path, "c", "x", **({} if reader is read_text else {"expect": list}), max_bytes=10) == whole
    assert _error(reader, path, "c", "x", max_bytes=9) == (
        f"c {path} has 10 bytes, more than the 9 a c may have; is it the right file?")


def test_a_file_that_grows_after_it_was_checked_is_refused_at_one_byte_past_the_limit(tmp_path, monkeypatch):
    path = _write(tmp_path, "a: 1\n" * 10)
    real_stat, real_fstat = os.stat, os.fstat

    def small(info: os.stat_result) -> os.stat_result:  # as it was when checked: 5 bytes
        return os.stat_result((*info[:6], 5, *info[7:10]))

    monkeypatch.setattr(os, "stat", lambda p, *a, **k: small(real_stat(p, *a, **k)))
    monkeypatch.setattr(os, "fstat", lambda fd: small(real_fstat(fd)))
    assert _error(read_yaml, path, "c", "x", max_bytes=20) == (
        f"c {path} has more than the 20 bytes a c may have; is it the right file?")


def test_a_file_that_grows_between_the_check_and_the_open_is_refused_by_the_second_check(tmp_path, monkeypatch):
    path = _write(tmp_path, "a: 1\n" * 10)
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: os.stat_result((*real_stat(p, *a, **k)[:6], 5,
                                                                        *real_stat(p, *a, **k)[7:10])))
    assert _error(read_yaml, path, "train config", "x", max_bytes=20) == (
        f"train config {path} has 50 bytes, more than the 20 a train config may have; is it the right file?")


def test_a_file_swapped_for_a_pipe_after_the_check_is_refused_without_blocking(tmp_path, monkeypatch):
    """Between the stat and the open the path becomes a FIFO with no writer: the open must not block."""
    import threading

    regular, fifo = _write(tmp_path, "a: 1\n"), tmp_path / "swapped.yaml"
    os.mkfifo(fifo)
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: real_stat(regular if p == fifo else p, *a, **k))
    outcome: list[str] = []
    reader = threading.Thread(target=lambda: outcome.append(_error(read_text, fifo, "train config", "fix it")))
    reader.start()
    reader.join(10)
    if reader.is_alive():  # blocked in open(): release it, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join()
        pytest.fail("read_text blocked on a FIFO")
    assert outcome == [f"train config {fifo} is a pipe, not a regular file; save it as a file and fix it"]


def test_an_os_error_is_one_line_with_its_reason(tmp_path):
    path = _write(tmp_path, "a: 1\n") / "below.yaml"  # a file is not a directory
    assert _error(read_yaml, path, "c", "check --c") == f"cannot read c {path} (Not a directory); check --c"


def test_too_deep_nesting_names_the_file(tmp_path):
    path = _write(tmp_path, "? " + "[" * 600 + "]" * 600 + "\n: 1\n")  # a key nested past Python's recursion limit
    assert _error(read_yaml, path, "train config", "x") == (
        f"train config {path} is nested too deeply to be a train config; is it the right file?")
    path = _write(tmp_path, "[" * 100_000 + "]" * 100_000, "d.json")
    assert _error(read_json, path, "manifest", "check it") == (
        f"manifest {path} is nested too deeply to be a manifest; check it")


def test_type_ok_and_type_name_for_the_hints_records_use():
    import typing

    from hpc.readers import type_name, type_ok

    assert type_ok({"a": 1}, dict[str, int]) and type_ok({}, dict[str, int])
    assert not type_ok({"a": "1"}, dict[str, int]) and not type_ok({1: 1}, dict[str, int])
    assert not type_ok([("a", 1)], dict[str, int]) and not type_ok("a", dict[str, int])
    assert type_ok(3, int) and not type_ok(True, int) and not type_ok("3", int) and not type_ok(3.0, int)
    assert type_ok(["a"], list[str]) and not type_ok(["a", 1], list[str]) and type_ok(None, str | None)
    assert type_ok("a", str | None) and not type_ok(3, str | None) and not type_ok(3, typing.Optional[str])
    assert type_ok(object(), object) and type_ok("x", str) and not type_ok(1, str)
    assert [type_name(h) for h in (int, str | None, list[str], dict[str, int])] == [
        "int", "str | None", "list[str]", "dict[str, int]"]
    assert type_name(typing.Optional[int]) == "Optional[int]"
