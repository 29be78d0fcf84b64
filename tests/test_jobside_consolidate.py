"""hpc/jobside/consolidate.py: checkpoint discovery and CLI refusals (fast), and a real ZeRO-3 round trip (ml).

The ml tests train the tiny model with LLaMA-Factory + DeepSpeed ZeRO-3 on 2 CPU processes once per module
(10-20 s with a warm TORCH_EXTENSIONS_DIR, ~45 s more on the first run), then consolidate and evaluate it: about
40 s in all when warm. The fast tests need only the stdlib, pytest and pyyaml.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpc import ROOT
from hpc.jobside import consolidate
from hpc.jobside.consolidate import find_zero_checkpoint

SCRIPT = ROOT / "hpc" / "jobside" / "consolidate.py"
EVAL = ROOT / "examples" / "eval" / "eval_ppl.py"
ZERO3_YAML = ROOT / "examples" / "train" / "tiny_sft_zero3.yaml"
TORCH_EXTENSIONS_DIR = "/var/cache/hpc-launch/torch_extensions"  # keeps DeepSpeed's shm_comm JIT build warm
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_DISABLE_TELEMETRY": "1"}  # never huggingface.co


def fake_zero(ckpt: Path, step: int, latest: bool = True) -> Path:
    """A ZeRO checkpoint layout with empty files: global_stepN/*model_states.pt and `latest`."""
    (ckpt / f"global_step{step}").mkdir(parents=True)
    (ckpt / f"global_step{step}" / "zero_pp_rank_0_mp_rank_00_model_states.pt").touch()
    if latest:
        (ckpt / "latest").write_text(f"global_step{step}")
    return ckpt


def run_script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the script as the job does: `python consolidate.py ...`, outside the package, isolated (-I)."""
    base = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    return subprocess.run([sys.executable, "-I", str(SCRIPT), *args], capture_output=True, text=True,
                          env={**base, **OFFLINE, **(env or {})}, timeout=600)


# --- find_zero_checkpoint -------------------------------------------------------------------------------------------

def test_a_checkpoint_dir_is_returned_as_is(tmp_path):
    ckpt = fake_zero(tmp_path / "checkpoint-6", 6)
    assert find_zero_checkpoint(ckpt) == ckpt
    assert consolidate.zero_tag(ckpt) == "global_step6"


def test_an_output_dir_gives_its_newest_zero_checkpoint_by_number(tmp_path):
    for step in (2, 9, 10):
        fake_zero(tmp_path / f"checkpoint-{step}", step)
    (tmp_path / "checkpoint-12").mkdir()  # newest, but an interrupted save: no ZeRO files
    (tmp_path / "checkpoint-12" / "model.safetensors").touch()
    assert find_zero_checkpoint(tmp_path) == tmp_path / "checkpoint-10"


def test_without_latest_the_newest_global_step_is_used(tmp_path):
    fake_zero(tmp_path, 4, latest=False)
    fake_zero(tmp_path, 12, latest=False)
    assert find_zero_checkpoint(tmp_path) == tmp_path
    assert consolidate.zero_tag(tmp_path) == "global_step12"


@pytest.mark.parametrize("layout, expected", [
    ("plain_model", "looks like a plain Hugging Face model"),
    ("ddp_checkpoints", "has checkpoint-4, checkpoint-2 but none is a ZeRO checkpoint"),
    ("dangling_latest", "incomplete save"),
    ("missing", "does not exist"),
])
def test_not_a_zero_checkpoint_is_a_one_line_value_error(tmp_path, layout, expected):
    path = tmp_path / "in"
    if layout == "plain_model":
        path.mkdir()
        (path / "config.json").write_text("{}")
        (path / "model.safetensors").touch()
    elif layout == "ddp_checkpoints":
        for step in (2, 4):
            (path / f"checkpoint-{step}").mkdir(parents=True)
            (path / f"checkpoint-{step}" / "optimizer.pt").touch()
    elif layout == "dangling_latest":
        path.mkdir()
        (path / "latest").write_text("global_step6")
    with pytest.raises(ValueError) as info:
        find_zero_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and expected in message and "expected a DeepSpeed ZeRO checkpoint" in message
    assert "\n" not in message


def test_input_is_local_for_paths_and_a_repo_id_otherwise(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert consolidate.parse_input("org/name") == (Path("org/name"), None, None)  # exists: local
    assert consolidate.parse_input("./nope/x") == (Path("./nope/x"), None, None)
    assert consolidate.parse_input("~/x")[0] == Path.home() / "x"
    assert consolidate.parse_input("my-org/Qwen2.5-0.5B") == (None, "my-org/Qwen2.5-0.5B", None)
    assert consolidate.parse_input("my-org/run@v1.0") == (None, "my-org/run", "v1.0")
    for bad in ("a/b/c", "just-a-name", "", "org/name@"):
        with pytest.raises(ValueError, match="neither an existing path nor a Hugging Face repo id"):
            consolidate.parse_input(bad)


# --- the CLI, run as the job runs it --------------------------------------------------------------------------------

def test_import_is_stdlib_only(tmp_path):
    shutil.copy(SCRIPT, tmp_path / "consolidate.py")  # as copied into the experiment directory
    code = "import sys, consolidate; assert not {'torch', 'deepspeed', 'huggingface_hub'} & set(sys.modules)"
    subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(tmp_path)!r}); {code}"],
                   check=True, timeout=60)


def test_non_empty_output_is_refused_without_overwrite(tmp_path):
    ckpt = fake_zero(tmp_path / "checkpoint-2", 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = run_script("--input", str(ckpt), "--output", str(out))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"consolidate: error: --output {out} is not empty; pass --overwrite to replace the files consolidate "
        "writes (other files are kept)"]
    assert result.stdout == "" and [p.name for p in out.iterdir()] == ["notes.txt"]


def test_upload_without_token_fails_before_doing_anything(tmp_path):
    ckpt = fake_zero(tmp_path / "checkpoint-2", 2)
    result = run_script("--input", str(ckpt), "--output", str(tmp_path / "out"), "--output_repo", "me/tiny")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == ["consolidate: error: --output_repo me/tiny needs a Hugging Face token to "
                                          "upload: set HF_TOKEN (e.g. in your secrets file); nothing was done"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, expected", [
    (["--input", "/no/such/dir"], "consolidate: error: /no/such/dir does not exist; expected a DeepSpeed ZeRO"),
    (["--input", "not a repo"], "consolidate: error: --input 'not a repo' is neither an existing path"),
    (["--input", "x", "--dtype", "fp16"], "consolidate: error: argument --dtype: invalid choice: 'fp16'"),
    (["--output_repo", "x/y"], "consolidate: error: the following arguments are required: --input"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, expected):
    result = run_script(*args, "--output", str(tmp_path / "out"))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(expected) and "Traceback" not in result.stderr


def test_upload_adds_one_commit_of_the_written_files_only(tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    calls = []

    class FakeApi:
        def __init__(self, token):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))
            return type("CommitInfo", (), {"commit_url": "https://hub.example/me/tiny/commit/abc"})()

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    result = consolidate.upload(tmp_path, ["model.safetensors", "config.json"], "me/tiny", False, "msg", "tok")
    assert result == {"repo": "me/tiny", "commit_url": "https://hub.example/me/tiny/commit/abc"}
    assert calls == [
        ("init", "tok"),
        ("create_repo", "me/tiny", {"private": True, "exist_ok": True}),
        ("upload_folder", {"folder_path": tmp_path, "repo_id": "me/tiny", "commit_message": "msg",
                           "allow_patterns": ["model.safetensors", "config.json"]}),
    ]


# --- real ZeRO-3 checkpoint (ml) ------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _training_complete(out: Path, steps: int) -> bool:
    state = out / "trainer_state.json"
    return (state.is_file() and json.loads(state.read_text()).get("global_step") == steps
            and (out / f"checkpoint-{steps}" / "latest").is_file()
            and any((out / f"checkpoint-{steps}" / f"global_step{steps}").glob("*model_states.pt")))


@pytest.fixture(scope="module")
def zero3_output(tmp_path_factory) -> Path:
    """Train the tiny model with LLaMA-Factory + ZeRO-3 on 2 processes; return the training output dir."""
    for module in ("torch", "deepspeed", "llamafactory", "transformers"):
        pytest.importorskip(module)
    if not (ROOT / "build/tiny/model/config.json").exists():
        subprocess.run([sys.executable, "examples/make_tiny_model.py"], cwd=ROOT, check=True)
    base = tmp_path_factory.mktemp("zero3")
    out = base / "out"
    config = {**yaml.safe_load(ZERO3_YAML.read_text()), "output_dir": str(out)}
    (base / "train.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    extensions = os.environ.get("TORCH_EXTENSIONS_DIR", TORCH_EXTENSIONS_DIR)
    Path(extensions).mkdir(parents=True, exist_ok=True)
    # The venv's bin first, as in a job that activates it: DeepSpeed's JIT build then uses the venv's ninja (1.13);
    # Debian's /usr/bin/ninja (1.11) hashes build commands differently, so alternating rebuilds the op (~45 s).
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, **OFFLINE, "PATH": path, "TORCH_EXTENSIONS_DIR": extensions, "HF_HOME": str(base / "hf_home")}
    for _attempt in range(2):  # known flake: a rank may abort at exit after a complete save; retry once
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
             f"--master_port={_free_port()}", "hpc/jobside/lf_train.py", str(base / "train.yaml")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        if _training_complete(out, config["max_steps"]):
            return out
    pytest.fail(f"ZeRO-3 training failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


@pytest.fixture(scope="module")
def consolidated(zero3_output, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("consolidated") / "fp32"
    result = run_script("--input", str(zero3_output), "--output", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("[consolidate] checkpoint ") and "[consolidate] wrote " in result.stdout
    return out, json.loads(result.stdout.splitlines()[-1])


@pytest.mark.ml
def test_fp32_consolidation_equals_the_gathered_weights_and_loads(zero3_output, consolidated):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out, summary = consolidated
    ckpt = zero3_output / "checkpoint-6"
    assert summary | {"tensors": 0} == {
        "input": str(zero3_output), "checkpoint": str(ckpt.resolve()), "tag": "global_step6", "output": str(out),
        "dtype": "float32", "tensors": 0, "weights": ["model.safetensors"], "uploaded": None,
        "files_copied": ["chat_template.jinja", "config.json", "generation_config.json", "tokenizer.json",
                         "tokenizer_config.json"]}
    assert sorted(p.name for p in out.iterdir()) == sorted(["model.safetensors", *summary["files_copied"]])
    ours, gathered = load_file(out / "model.safetensors"), load_file(ckpt / "model.safetensors")
    assert summary["tensors"] == len(ours) == len(gathered) > 0
    assert sorted(ours) == sorted(gathered)
    assert all(ours[name].dtype == torch.float32 and torch.equal(ours[name], gathered[name]) for name in ours)
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert model.dtype == torch.float32


@pytest.mark.ml
def test_bf16_from_a_checkpoint_dir(zero3_output, tmp_path):
    import torch
    from safetensors.torch import load_file

    ckpt, out = zero3_output / "checkpoint-4", tmp_path / "bf16"
    result = run_script("--input", str(ckpt), "--output", str(out), "--dtype", "bf16")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["tag"] == "global_step4"
    ours, gathered = load_file(out / "model.safetensors"), load_file(ckpt / "model.safetensors")
    assert {t.dtype for t in ours.values()} == {torch.bfloat16}
    assert all(torch.equal(ours[name], gathered[name].to(torch.bfloat16)) for name in gathered)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.ml
def test_rerun_needs_overwrite_which_keeps_other_files(consolidated, tmp_path, zero3_output):
    out = tmp_path / "out"
    shutil.copytree(consolidated[0], out)
    (out / "notes.txt").write_text("mine")
    (out / "config.json").write_text("{}")  # ours: replaced on --overwrite
    refused = run_script("--input", str(zero3_output), "--output", str(out))
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1
    assert (out / "config.json").read_text() == "{}"
    result = run_script("--input", str(zero3_output), "--output", str(out), "--overwrite")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2"
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in consolidated[0].iterdir()] + ["notes.txt"])


@pytest.mark.ml
def test_repo_input_is_downloaded_into_the_hf_cache(zero3_output, tmp_path, fake_hub):
    """org/name[@rev] goes through snapshot_download (HF_ENDPOINT, HF_HUB_CACHE); the cache then works offline."""
    files = {str(p.relative_to(zero3_output)): p.read_bytes()
             for p in (zero3_output / "checkpoint-6").rglob("*") if p.is_file()}
    sha = fake_hub.add_repo("org/zero3", files)
    cache = tmp_path / "hub_cache"
    online = {**fake_hub.env(), "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(cache)}
    result = run_script("--input", "org/zero3", "--output", str(tmp_path / "out"), env=online)
    assert result.returncode == 0, result.stdout + result.stderr
    snapshot = cache / "models--org--zero3" / "snapshots" / sha
    assert json.loads(result.stdout.splitlines()[-1])["checkpoint"] == str(snapshot / "checkpoint-6")
    offline = run_script("--input", f"org/zero3@{sha}", "--output", str(tmp_path / "out2"),
                         env={"HF_HUB_CACHE": str(cache)})
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert (snapshot / "checkpoint-6" / "latest").is_file()  # the cache is kept
    missing = run_script("--input", "org/missing", "--output", str(tmp_path / "out3"), env=online)
    assert missing.returncode == 2
    assert missing.stderr == "consolidate: error: Hugging Face repo (or no access with this HF_TOKEN) not found: " \
                             "org/missing\n"


@pytest.mark.ml
def test_upload_adds_one_commit_and_deletes_nothing(consolidated, zero3_output, tmp_path, fake_hub):
    fake_hub.add_repo("me/tiny-sft", {"README.md": b"my card"})
    before = len(fake_hub.commits("me/tiny-sft"))
    out = tmp_path / "out"
    shutil.copytree(consolidated[0], out)
    (out / "notes.txt").write_text("mine, not for the Hub")
    env = {**fake_hub.env(), "HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_fake"}
    result = run_script("--input", str(zero3_output), "--output", str(out), "--overwrite",
                        "--output_repo", "me/tiny-sft", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    uploaded = json.loads(result.stdout.splitlines()[-1])["uploaded"]
    assert uploaded["repo"] == "me/tiny-sft" and uploaded["commit_url"].startswith(fake_hub.url)
    commits = fake_hub.commits("me/tiny-sft")
    assert len(commits) == before + 1 and commits[-1]["message"].startswith("Upload consolidated float32 weights")
    assert sorted(fake_hub.repo_files("me/tiny-sft")) == sorted(["README.md", *consolidated[1]["weights"],
                                                                  *consolidated[1]["files_copied"]])
    assert fake_hub.repo_files("me/tiny-sft")["model.safetensors"] == (out / "model.safetensors").read_bytes()
    assert not fake_hub.is_private("me/tiny-sft")  # an existing repo keeps its visibility
    new = run_script("--input", str(zero3_output), "--output", str(out), "--overwrite", "--output_repo", "me/new",
                     "--commit_message", "first weights", env=env)
    assert new.returncode == 0, new.stdout + new.stderr
    assert fake_hub.is_private("me/new") and fake_hub.commits("me/new")[-1]["message"] == "first weights"


@pytest.mark.ml
def test_eval_ppl_on_the_consolidated_model(consolidated, tmp_path):
    out = tmp_path / "results" / "ppl.json"
    proc = subprocess.run([sys.executable, str(EVAL), "--model", str(consolidated[0]), "--data",
                           str(ROOT / "build/tiny/data/tiny_eval.json"), "--output", str(out)],
                          capture_output=True, text=True, env={**os.environ, **OFFLINE}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["examples"] == 8 and math.isfinite(result["perplexity"]) and result["perplexity"] > 1
    assert math.isclose(math.exp(result["eval_loss"]), result["perplexity"], rel_tol=1e-4)
    assert json.loads(proc.stdout.splitlines()[-1]) == result
