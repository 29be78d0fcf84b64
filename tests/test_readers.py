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
