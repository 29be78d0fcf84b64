"""Property-based: every reader, fed malformed content (random bytes, wrong types, deep nesting, duplicate keys), either
returns what it promises or raises LaunchError with one line; never another exception. A few go through the CLI."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpc import ROOT
from hpc.errors import LaunchError

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

#: JSON-like values: what a record or config might hold, of any type at any place.
scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) | st.text(max_size=12)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=4), max_leaves=12)
#: Text a file might hold: random bytes, random text, YAML of random data with a key repeated, deep nesting.
nested = st.integers(1, 3000).map(lambda n: "[" * n + "]" * n)


@st.composite
def yaml_with_duplicate(draw) -> str:
    data = draw(st.dictionaries(st.text("abc_", min_size=1, max_size=6), values, min_size=1, max_size=5))
    key = draw(st.sampled_from(sorted(data)))
    return yaml.safe_dump(data) + f"{key}: again\n"


contents = (st.binary(max_size=400) | st.text(max_size=400).map(str.encode) | nested.map(str.encode)
            | yaml_with_duplicate().map(str.encode) | values.map(lambda v: json.dumps(v).encode()))


@contextmanager
def written(content: bytes, name: str):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(content)
        yield path


@contextmanager
def _stderr():
    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer), contextlib.redirect_stdout(io.StringIO()):
        yield buffer


def one_line_or_value(call, *args):
    """The call's value, or None after checking that it raised a one-line LaunchError."""
    try:
        return call(*args)
    except LaunchError as exc:
        assert str(exc) and "\n" not in str(exc), repr(str(exc))
        return None


@FAST
@given(contents)
def test_read_yaml_and_read_json(content):
    from hpc.readers import read_json, read_yaml

    with written(content, "f") as path:
        for reader in (read_yaml, read_json):
            value = one_line_or_value(reader, path, "config", "fix it")
            assert value is None or isinstance(value, dict)


@FAST
@given(contents)
def test_dotenv(content):
    from hpc.envfiles import read_dotenv

    with written(content, "x.env") as path:
        value = one_line_or_value(read_dotenv, path)
        assert value is None or all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


@FAST
@given(contents | st.dictionaries(st.sampled_from(["name", "partition", "gpus_per_node", "max_time", "partitions",
                                                   "eval_command", "tunnel_direct"]), values).map(
    lambda changes: yaml.safe_dump({**yaml.safe_load((ROOT / "cluster_profiles" / "local.yaml").read_text()), "name": "p",
                                    **changes}).encode()))
def test_cluster_profile(content):
    from hpc.profiles import load_profile

    with written(content, "p.yaml") as path:
        one_line_or_value(load_profile, path)


_MANIFEST = {"experiment": "e", "experiment_dir": "/x", "cluster": "local", "backend": "slurm", "dry_run": False,
             "created_at": "2026-01-01T00:00:00+00:00", "schema": 1,
             "jobs": [{"key": "train", "name": "n", "job_type": "train", "script": "s", "dependencies": [],
                       "job_id": "1", "state": "PENDING"}]}
_MANIFEST_KEYS = sorted({*_MANIFEST, *_MANIFEST["jobs"][0]})


@st.composite
def manifests(draw) -> bytes:
    """A manifest with one field (of the manifest or of its job) replaced by anything."""
    data = json.loads(json.dumps(_MANIFEST))
    key, value = draw(st.sampled_from(_MANIFEST_KEYS)), draw(values)
    (data if key in data else data["jobs"][0])[key] = value
    return json.dumps(data).encode()


@FAST
@given(contents | manifests())
def test_manifest(content):
    from hpc import manifest

    with written(content, "manifest.json") as path:
        one_line_or_value(manifest.read, path.parent)


@FAST
@given(contents | st.fixed_dictionaries({"uploads": values, "wandb_runs": values}).map(lambda d: json.dumps(d).encode())
       | st.lists(st.fixed_dictionaries({"folder": values, "repo": values, "indices": values}), max_size=2).map(
           lambda u: json.dumps({"uploads": u}).encode()))
def test_deferred_uploads_record(content):
    from hpc.sync import _records

    with written(content, "deferred.json") as path:
        (path.parent / "configs").mkdir()
        path.rename(path.parent / "configs" / "deferred.json")
        one_line_or_value(_records, path.parent)


@FAST
@given(contents | st.dictionaries(st.sampled_from(["model_name", "datasets", "wandb", "training_parameters",
                                                   "training_start"]), values).map(
    lambda d: json.dumps({"schema": "hpc-launch.run_summary/1", **d}).encode()))
def test_run_summary(content):
    from hpc.registry_summary import load_summary

    with written(content, "run_summary.json") as path:
        one_line_or_value(load_summary, path)


@FAST
@given(contents | st.dictionaries(st.text(max_size=5), values).map(lambda d: json.dumps(d).encode()))
def test_dataset_info(content):
    from hpc.lf_data import read_dataset_info

    with written(content, "dataset_info.json") as path:
        one_line_or_value(read_dataset_info, path)


_DATAGEN_KEYS = ["engine", "model", "backend", "server", "chunk_size", "chunk_parallelism", "cpus_per_task"]


@FAST
@given(contents | st.dictionaries(st.sampled_from(_DATAGEN_KEYS), values).map(lambda d: yaml.safe_dump(d).encode())
       | st.dictionaries(st.sampled_from(["command", "gpus", "port", "health_timeout", "time_limit"]), values).map(
           lambda s: yaml.safe_dump({"engine": "vllm_local", "model": "m", "server": s}).encode()))
def test_datagen_config(content):
    from hpc.context import Context
    from hpc.datagen_config import load_config
    from hpc.options import LaunchOptions
    from hpc.profiles import get_profile

    with written(content, "dg.yaml") as path:
        (path.parent / "gen.py").write_text("")
        opts = LaunchOptions(job_type="datagen", datagen_config=str(path), datagen_script="gen.py")
        ctx = Context(profile=get_profile("local"), env={}, secrets_path=None, experiments_dir=path.parent,
                      workdir=path.parent)
        one_line_or_value(load_config, opts, ctx, {})


@FAST
@given(st.text(max_size=60))
def test_train_extra_args(text):
    from hpc.lf_data import parse_extra_args

    one_line_or_value(parse_extra_args, text)


@settings(max_examples=15, deadline=None)
@given(contents)
def test_cli_with_a_malformed_train_config(content):
    """The whole launcher, in-process: a malformed train config is exit 2 and one line, and nothing is written."""
    from hpc.launch import main

    with written(content, "t.yaml") as path, pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", "/nonexistent")  # no SLURM command could run
        mp.chdir(path.parent)
        with _stderr() as err:
            code = main(["--cluster", "local", "--train_config_path", str(path), "--experiments_dir", "exp",
                         "--dry_run", "--no-validate"])
        assert code == 2 and len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
        assert not (path.parent / "exp").exists()


_TRAIN_KEYS = ["model_name_or_path", "dataset", "eval_dataset", "dataset_dir", "deepspeed", "output_dir", "report_to",
               "push_to_hub", "hub_model_id", "global_batch_size", "per_device_train_batch_size", "formatting",
               "messages", "adapter_name_or_path", "do_train", "max_steps"]


@FAST
@given(st.dictionaries(st.sampled_from(_TRAIN_KEYS), values, min_size=1, max_size=3))
def test_train_config_values_of_any_type(changes):
    """A train config whose values have any type: a plan, or one line (the plan is built as a dry run would)."""
    from helpers import TRAIN_YAML
    from hpc.jobs.train import build_plan
    from hpc.options import LaunchOptions

    with written(yaml.safe_dump({**TRAIN_YAML, **changes}).encode(), "t.yaml") as path:
        opts = LaunchOptions(cluster="local", train_config_path=str(path), experiments_dir=str(path.parent / "exp"),
                             dry_run=True, job_name="p", prefetch=True, consolidate=True)
        with _stderr(), contextlib.redirect_stdout(io.StringIO()):
            one_line_or_value(build_plan, opts)
