"""hpc/lf_check.py: LLaMA-Factory train configs checked from LF's own sources, read with ast (never imported).

The tests against the installed LLaMA-Factory skip when it is absent; a fake LF package in tmp_path covers the source
reading and the fallbacks everywhere. The ml test imports LLaMA-Factory for real (in a subprocess, ~10 s) and compares.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from hpc import ROOT, lf_check
from hpc.errors import LaunchError

TINY = yaml.safe_load((ROOT / "examples" / "train" / "tiny_sft.yaml").read_text())
needs_lf = pytest.mark.skipif(importlib.util.find_spec("llamafactory") is None, reason="LLaMA-Factory not installed")


@pytest.fixture(autouse=True)
def _fresh_caches(tmp_path, monkeypatch):
    """Each test reads the sources it sees (the fake package tests swap them), with an empty cache of its own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    lf_check._schema.cache_clear()
    lf_check._SCOPES.clear()
    yield
    lf_check._schema.cache_clear()
    lf_check._SCOPES.clear()


def refusal(config: dict) -> str:
    with pytest.raises(LaunchError) as exc:
        lf_check.check_train_config({**TINY, **config}, "tiny_sft.yaml")
    message = str(exc.value)
    assert exc.value.exit_code == 2 and "\n" not in message and message.startswith("train config tiny_sft.yaml: ")
    return message.removeprefix("train config tiny_sft.yaml: ")


# --- against the installed LLaMA-Factory ----------------------------------------------------------------------------

@needs_lf
def test_the_tiny_example_and_valid_spellings_pass():
    assert lf_check.check_train_config(TINY, "tiny_sft.yaml") is None
    valid = {"learning_rate": "1e-5", "num_train_epochs": 3, "dataset": ["a", "b"], "lora_target": ["q_proj"],
             "deepspeed": {"zero_optimization": {"stage": 3}}, "report_to": ["wandb"], "master_port": 29500,
             "lr_scheduler_type": "cosine_with_min_lr", "save_strategy": "epoch", "finetuning_type": "lora",
             "flash_attn": "fa2", "cutoff_len": 128.0, "max_steps": "6", "output_dir": None}
    assert lf_check.check_train_config({**TINY, **valid}, "tiny_sft.yaml") is None


@needs_lf
def test_a_misspelt_key_is_refused_with_the_key_it_means():
    message = refusal({"learning_rte": 1e-3})
    assert message.startswith("unknown key 'learning_rte' (not a LLaMA-Factory ")
    assert message.endswith("train argument); did you mean 'learning_rate'?")
    assert refusal({"zzz_nothing_like_it": 1}).endswith("; remove it or fix its spelling")


@needs_lf
def test_allow_extra_args_lets_unknown_keys_pass_as_in_llamafactory(monkeypatch):
    monkeypatch.setenv("ALLOW_EXTRA_ARGS", "1")
    assert lf_check.check_train_config({**TINY, "learning_rte": 1e-3}, "tiny_sft.yaml") is None


@needs_lf
@pytest.mark.parametrize(("config", "message"), [
    ({"num_train_epochs": "three"}, "num_train_epochs must be a number, not 'three'"),
    # LLaMA-Factory passes YAML values to the dataclasses as they are: the string "false" would turn bf16 on.
    ({"bf16": "yes"}, "bf16 must be true or false, not 'yes'"),
    ({"bf16": "false"}, "bf16 must be true or false, not 'false'"),
    ({"max_steps": 2.5}, "max_steps must be a whole number, not 2.5"),
    ({"template": {"name": "qwen"}}, "template must be a string, not {'name': 'qwen'}"),
    ({"finetuning_type": "ful"}, "finetuning_type: 'ful' is not a valid choice; did you mean 'full'?"),
    ({"lr_scheduler_type": "cosin"}, "lr_scheduler_type: 'cosin' is not a valid choice; did you mean 'cosine'?"),
    ({"save_strategy": "step"}, "save_strategy: 'step' is not a valid choice; did you mean 'steps'?"),
    ({"hub_strategy": "x"}, "hub_strategy must be one of end, every_save, checkpoint, all_checkpoints, not 'x'"),
])
def test_clearly_wrong_values_are_refused(config, message):
    assert refusal(config) == message


@needs_lf
def test_the_cached_kinds_are_the_kinds_read_from_the_sources(monkeypatch):
    read = lf_check._field_kinds()
    assert isinstance(read, dict) and read == {name: lf_check._kinds(*f) for name, f in lf_check._schema().items()}
    with monkeypatch.context() as patched:
        _forget_sources(patched)
        cached = lf_check._field_kinds()
        assert isinstance(cached, dict)
        assert {name: lf_check._as_kinds(k) for name, k in cached.items()} == read  # the same configs are refused


def test_a_check_imports_no_ml_library():
    """Cheap: the sources are read, never imported (its cost is measured in benchmarks/, not asserted here)."""
    code = textwrap.dedent(f"""
        import sys
        from hpc.lf_check import check_train_config
        note = check_train_config({TINY!r}, "tiny_sft.yaml")
        print(note, sorted({{"llamafactory", "transformers", "torch"}} & set(sys.modules)))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split()
    assert out == ["None", "[]"]


def test_a_note_not_an_error_without_llamafactory(monkeypatch):
    real = importlib.util.find_spec
    absent = lambda name, *rest: None if name == "llamafactory" else real(name, *rest)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", absent)
    note = lf_check.check_train_config({"learning_rte": 1, "bf16": "yes"}, "x.yaml")
    assert note == "LLaMA-Factory is not installed here, so train config x.yaml was not checked before queueing"


# --- a fake LLaMA-Factory: how the sources are read, and what happens when they look different ------------------------

FAKE_PARSER = """
from .args import ModelArguments, TrainingArguments
_TRAIN_ARGS = [ModelArguments, TrainingArguments]
"""
FAKE_ARGS = '''
import os
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional, Union
from .enums import Mode
from .base import Base
if os.environ.get("NEVER"):
    Chosen = object
else:
    Chosen = Base

@dataclass
class Mixin:
    level: Literal["low", "high"] = "low"

@dataclass
class ModelArguments(Mixin):
    name: Optional[str] = None
    table: ClassVar[int] = 3
    hidden: int = field(default=0, init=False)

@dataclass
class TrainingArguments(Mixin, Chosen):
    mode: Union[Mode, str] = "a"
    extra: "dict | str | None" = None
'''
FAKE_BASE = """
from dataclasses import dataclass
@dataclass
class Base:
    flag: bool = False
    steps: int = 1
    ratio: float = 0.5
"""
FAKE_ENUMS = '''
import enum
class Mode(str, enum.Enum):
    """Two modes."""
    A = "a"
    B = "b"
'''


@pytest.fixture
def fake_lf(tmp_path, monkeypatch) -> Path:
    hparams = tmp_path / "llamafactory" / "hparams"
    hparams.mkdir(parents=True)
    for name, text in {"../__init__": "", "__init__": "", "parser": FAKE_PARSER, "args": FAKE_ARGS,
                       "base": FAKE_BASE, "enums": FAKE_ENUMS}.items():
        (hparams / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "llamafactory", raising=False)
    return hparams


def test_fields_come_from_the_train_classes_their_bases_and_the_modules_imports(fake_lf):
    assert set(lf_check._schema()) == {"level", "name", "mode", "extra", "flag", "steps", "ratio"}
    ok = {"level": "high", "name": "n", "mode": "b", "extra": {"k": 1}, "flag": True, "steps": 2.0, "ratio": "1e-3"}
    assert lf_check.check_train_config(ok, "f.yaml") is None
    for bad, message in [({"hidden": 1}, "unknown key 'hidden'"), ({"table": 1}, "unknown key 'table'"),
                         ({"mode": "c"}, "mode must be one of a, b, not 'c'"), ({"steps": "x"}, "steps must be"),
                         ({"level": "hi"}, "did you mean 'high'?"), ({"flag": 1}, "flag must be true or false")]:
        with pytest.raises(LaunchError, match=message):
            lf_check.check_train_config(bad, "f.yaml")


def test_sources_of_an_unexpected_shape_give_a_note_not_a_refusal(fake_lf):
    (fake_lf / "parser.py").write_text("from .args import *\n_TRAIN_ARGS = [ModelArguments]\n")
    note = lf_check.check_train_config({"anything": "goes"}, "f.yaml")
    assert note == ("could not read LLaMA-Factory's train arguments (_SchemaError: cannot find ModelArguments in "
                    "llamafactory.hparams.parser); train config f.yaml was not checked")


def _forget_sources(monkeypatch):
    """A new process, as far as the checker knows; reading any source from now on fails the test."""
    lf_check._schema.cache_clear()
    lf_check._SCOPES.clear()
    monkeypatch.setattr(lf_check, "_schema", lambda: pytest.fail("the sources were read again"))


def test_the_kinds_come_from_the_cache_while_every_source_is_unchanged(fake_lf, tmp_path, monkeypatch):
    with pytest.raises(LaunchError, match="mode must be one of a, b, not 'c'"):
        lf_check.check_train_config({"mode": "c"}, "f.yaml")
    entry = json.loads((tmp_path / "cache" / "hpc-launch" / "lf_check" / lf_check.CACHE_FILE).read_text())
    assert {"llamafactory.hparams.parser", "llamafactory.hparams.args", "llamafactory.hparams.base",
            "llamafactory.hparams.enums"} <= set(entry["files"])
    with monkeypatch.context() as patched:
        _forget_sources(patched)
        assert lf_check.check_train_config({"mode": "b", "steps": 2}, "f.yaml") is None
        with pytest.raises(LaunchError, match="mode must be one of a, b, not 'c'"):
            lf_check.check_train_config({"mode": "c"}, "f.yaml")
        with pytest.raises(LaunchError, match="did you mean 'high'?"):
            lf_check.check_train_config({"level": "hi"}, "f.yaml")
    lf_check._SCOPES.clear()
    (fake_lf / "enums.py").write_text(FAKE_ENUMS + '    C = "c"\n')  # a new LF version: the entry is stale
    assert lf_check.check_train_config({"mode": "c"}, "f.yaml") is None


def test_a_cache_entry_of_other_sources_or_an_unwritable_cache_is_only_slower(fake_lf, tmp_path, monkeypatch):
    folder = tmp_path / "cache" / "hpc-launch" / "lf_check"
    folder.mkdir(parents=True)
    (folder / lf_check.CACHE_FILE).write_text('{"python": "other", "fields": {"anything": ["any"]}}')
    with pytest.raises(LaunchError, match="unknown key 'anything'"):
        lf_check.check_train_config({"anything": 1}, "f.yaml")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "no" / "such" / "place"))
    with pytest.raises(LaunchError, match="unknown key 'anything'"):
        lf_check.check_train_config({"anything": 1}, "f.yaml")
    assert not (tmp_path / "no").exists()


# --- the real thing -------------------------------------------------------------------------------------------------

REAL_ARGS = """
import dataclasses, enum, json, sys, types, typing
import llamafactory, transformers
from llamafactory.hparams.parser import _TRAIN_ARGS, _parse_train_args
from transformers import HfArgumentParser

def kinds(tp):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        found = [k for a in args for k in kinds(a)]
        enum_and_str = any(isinstance(a, type) and issubclass(a, enum.Enum) for a in args) and str in args
        return [k for k in found if k != "str"] if enum_and_str else found
    if tp is type(None):
        return ["none"]
    if tp in (bool, int, float, str, dict):
        return [tp.__name__]
    if origin is dict:
        return ["dict"]
    if origin is typing.Literal:
        return [list(args)]
    if isinstance(tp, type) and issubclass(tp, enum.Enum) and all(isinstance(m.value, str) for m in tp):
        return [[m.value for m in tp]]
    return ["any"]

fields, enum_or_str = {}, []
for cls in HfArgumentParser(_TRAIN_ARGS).dataclass_types:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.init:
            tp = hints[f.name]
            fields[f.name] = kinds(tp)
            if typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp) \
                    and "str" not in fields[f.name]:
                enum_or_str.append(f.name)
config = json.loads(sys.argv[1])
refused_by_lf = []
for name in enum_or_str:
    try:
        _parse_train_args({**config, name: "not-a-choice"})
    except ValueError:
        refused_by_lf.append(name)
print(json.dumps({"versions": [llamafactory.__version__, transformers.__version__], "fields": fields,
                  "enum_or_str": enum_or_str, "refused_by_lf": refused_by_lf}))
"""


@pytest.mark.ml
@needs_lf
def test_keys_and_types_match_what_llamafactory_really_parses(tmp_path):
    config = {**TINY, "output_dir": str(tmp_path / "out")}
    proc = subprocess.run([sys.executable, "-c", REAL_ARGS, json.dumps(config)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    real = json.loads(proc.stdout.splitlines()[-1])
    ours = lf_check._schema()
    assert isinstance(ours, dict), ours
    assert set(ours) == set(real["fields"]), f"LF {real['versions']}: {set(ours) ^ set(real['fields'])}"
    as_json = {name: json.loads(json.dumps(lf_check._kinds(*ours[name]))) for name in ours}
    assert {n: sorted(map(repr, k)) for n, k in as_json.items()} == {
        n: sorted(map(repr, k)) for n, k in real["fields"].items()}
    # `SomeEnum | str` admits only the enum's values: transformers refuses any other string.
    assert real["enum_or_str"] and real["refused_by_lf"] == real["enum_or_str"]
