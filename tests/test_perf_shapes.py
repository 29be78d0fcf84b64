"""What keeps a launch cheap on a login node, checked by its shape (never by timing; benchmarks/ has the figures):
which modules a launch imports, what it keeps in hpc-launch's cache, how its size grows with the number of chunks,
and that listing tasks needs no stat per task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from hpc import ROOT
from hpc.jobside import datagen as jobside_datagen

from helpers import TINY_YAML

#: Imported only by what needs them: the job-side health check, other job types, refusals, a chain step not asked for.
NEVER_FOR_TRAIN = {"hpc.jobs.datagen", "hpc.jobside.datagen", "hpc.datagen_config", "urllib.request", "http.client",
                   "hpc.jobs.consolidate", "hpc.jobside.consolidate", "difflib", "importlib.metadata",
                   "importlib.resources"}


def _launch(tmp_path: Path, *args: str) -> tuple[set[str], str]:
    """A launch in a fresh process, as the console script runs it; the modules it imported, and what it printed."""
    code = textwrap.dedent("""
        import contextlib, io, json, sys
        from hpc.launch import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                code = main(sys.argv[1:])
            except SystemExit as exc:  # --help
                code = exc.code
        print(json.dumps({"code": code, "modules": sorted(sys.modules), "out": out.getvalue()}))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["code"] == 0, result["out"]
    return set(result["modules"]), result["out"]


def _dry_run(tmp_path: Path, name: str, *args: str) -> tuple[set[str], str]:
    return _launch(tmp_path, "--cluster", "local", "--dry_run", "--no-validate", "--experiments_dir",
                   str(tmp_path / "exp"), "--job_name", name, *args)


def test_a_train_dry_run_imports_only_what_train_needs_and_fills_the_cache(tmp_path):
    modules, _ = _dry_run(tmp_path, "t", "--train_config_path", str(TINY_YAML))
    assert not modules & NEVER_FOR_TRAIN, modules & NEVER_FOR_TRAIN
    assert list((tmp_path / "cache" / "hpc-launch" / "templates").glob("*.cache"))  # compiled templates, reused
    chained, _ = _dry_run(tmp_path, "c", "--train_config_path", str(TINY_YAML), "--deepspeed",
                          "examples/train/ds_z3.json", "--consolidate")
    assert "hpc.jobs.consolidate" in chained


def test_help_imports_neither_templates_nor_yaml(tmp_path):
    modules, out = _launch(tmp_path, "--job_type", "train", "--help")
    assert "--train_config_path" in out
    assert not modules & {"jinja2", "yaml", "hpc.spec", "hpc.profiles", "dotenv"}, modules


def test_a_datagen_dry_run_of_10000_chunks_is_as_small_as_one_of_10(tmp_path):
    (tmp_path / "gen.py").write_text("")
    sizes = {}
    for n in (10, 10_000):
        modules, _ = _dry_run(tmp_path, f"d{n}", "--job_type", "datagen", "--datagen_config", "tiny_local",
                              "--datagen_script", str(tmp_path / "gen.py"), "--enable_trace_gen",
                              "--trace_target_repo", "org/traces", "--num_chunks", str(n))
        assert not modules & {"urllib.request", "http.client", "difflib"}, modules
        exp = tmp_path / "exp" / f"d{n}"
        deferred = json.loads((exp / "configs" / "deferred.json").read_text())
        assert [u.get("indices") for u in deferred["uploads"]] == [f"0-{n - 1}"]
        assert (exp / "configs" / "deferred.json").stat().st_size < 1024
        sizes[n] = sum(p.lstat().st_size for p in exp.rglob("*"))
    assert sizes[10_000] < 200 * 1024
    assert sizes[10_000] - sizes[10] < 60 * 1024  # ten array scripts instead of one (MaxArraySize 1001), nothing per chunk


def test_listing_tasks_reads_entry_types_without_a_stat_per_task(tmp_path, monkeypatch):
    tasks = tmp_path / "tasks"
    for name in ("b", "a", ".hidden", "c"):
        (tasks / name).mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tasks / "d").symlink_to(tmp_path / "elsewhere")  # a symlinked task is a task (only it needs a stat)
    (tasks / "notes.txt").write_text("")
    stats = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda path, *a, **k: stats.append(path) or real_stat(path, *a, **k))
    assert jobside_datagen.task_names(tasks) == ["a", "b", "c", "d"]
    assert stats == []  # the entries' types from os.scandir, not a Path.is_dir() (os.stat) per task
    files = tmp_path / "files"
    files.mkdir()
    for name in ("t2.json", "t1.json", ".x.json"):
        (files / name).write_text("{}")
    assert jobside_datagen.task_list(files) == [files / "t1.json", files / "t2.json"]


def test_a_launch_works_with_a_damaged_or_impossible_cache(tmp_path):
    _dry_run(tmp_path, "first", "--train_config_path", str(TINY_YAML))
    cached = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert cached
    for path in cached:
        path.write_bytes(b"\0damaged")
    _, out = _dry_run(tmp_path, "damaged", "--train_config_path", str(TINY_YAML))
    assert "dry run: nothing submitted" in out
    assert all(p.read_bytes() != b"\0damaged" for p in cached if p.suffix == ".cache")  # compiled again, stored
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "hpc-launch").write_text("a file where the cache would go")
    env = {"XDG_CACHE_HOME": str(blocked)}
    code = "import sys; from hpc.launch import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", code, "--cluster", "local", "--dry_run", "--no-validate",
                           "--experiments_dir", str(tmp_path / "exp"), "--job_name", "blocked", "--train_config_path",
                           str(TINY_YAML)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert proc.returncode == 0 and "dry run: nothing submitted" in proc.stdout, proc.stderr


def test_no_class_of_the_launcher_has_methods_compiled_at_import():
    """dataclass compiles each method it writes on every start (~1 ms a frozen class): records share theirs."""
    import importlib
    import pkgutil

    import hpc

    generated, dataclasses = [], 0
    for info in pkgutil.walk_packages(hpc.__path__, "hpc."):
        if info.name.startswith("hpc.jobside"):  # copied into experiments, run on their own
            continue
        module = importlib.import_module(info.name)
        for cls in vars(module).values():
            if isinstance(cls, type) and cls.__module__ == module.__name__ and "__dataclass_fields__" in vars(cls):
                dataclasses += 1
                generated += [f"{cls.__qualname__}.{name}" for name, value in vars(cls).items()
                              if getattr(getattr(value, "__code__", None), "co_filename", "") == "<string>"]
    assert dataclasses > 30
    assert not generated, generated
