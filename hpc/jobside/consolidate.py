"""Consolidate a DeepSpeed ZeRO checkpoint into a Hugging Face safetensors model, optionally upload it.

  python consolidate.py --input PATH_OR_REPO --output DIR [--dtype fp32|bf16] [--overwrite]
                        [--output_repo ORG/NAME] [--public] [--commit_message MSG]

Runs inside a SLURM job (copied into the experiment dir). Only the stdlib is imported at module level,
so the launcher can reuse the checks cheaply. Exit 0 done, 2 bad input (one line), 1 other failure.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import sys
import tempfile
from pathlib import Path

EXPECTED = ("a DeepSpeed ZeRO checkpoint dir (a `latest` file naming a global_stepN/ dir with *model_states.pt) "
            "or a training output dir whose checkpoint-N/ subdirs hold one")
#: Non-weight files copied next to the weights (never optimizer/rng/scheduler/global_step/training_args).
AUX_PATTERNS = ("config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json", "added_tokens.json",
                "chat_template.jinja", "chat_template.json", "vocab.*", "merges.txt", "*.tiktoken", "spiece.model",
                "sentencepiece*.model", "*processor_config.json", "configuration_*.py", "modeling_*.py",
                "tokenization_*.py")
WEIGHT_FILE_RE = re.compile(r"(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?")
REPO_RE = re.compile(r"([A-Za-z0-9][\w.-]*/[\w.-]+)(?:@([\w./-]+))?")
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
HUB_TIMEOUT_ENV = "HPC_LAUNCH_HUB_TIMEOUT"


class BadInput(ValueError):
    """A problem with the arguments or the input/output paths: reported in one line, exit 2."""


def log(message: str) -> None:
    """One progress line."""
    print(f"[consolidate] {message}", flush=True)


def _step(name: str) -> int:
    return int(re.sub(r"\D", "", name) or -1)


def zero_tag(ckpt: Path) -> str | None:
    """The tag (global_stepN) to convert: the one `latest` names, else the newest global_step*/; None if invalid."""
    latest = ckpt / "latest"
    if latest.is_file():
        tags = [latest.read_text().strip()]
    else:
        tags = sorted((p.name for p in ckpt.glob("global_step*") if p.is_dir()), key=_step, reverse=True)
    return next((t for t in tags if t and any((ckpt / t).glob("*model_states.pt"))), None)


def find_zero_checkpoint(path: Path) -> Path:
    """Return `path` if it is a ZeRO checkpoint, else its newest checkpoint-N/ that is one; ValueError if none."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise BadInput(f"{path} {'is not a directory' if path.exists() else 'does not exist'}; expected {EXPECTED}")
    ckpts = sorted((p for p in path.glob("checkpoint-*") if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)),
                   key=lambda p: _step(p.name), reverse=True)
    for ckpt in [path, *ckpts]:
        if zero_tag(ckpt):
            return ckpt
    if ckpts:
        names = ", ".join(p.name for p in ckpts)
        raise BadInput(f"{path} has {names} but none is a ZeRO checkpoint (trained without DeepSpeed ZeRO?); "
                       f"expected {EXPECTED}")
    hint = (" (its `latest` names a missing or empty tag dir: an incomplete save?)" if (path / "latest").is_file()
            else " (it looks like a plain Hugging Face model: nothing to consolidate)"
            if (path / "config.json").is_file() and any(path.glob("*.safetensors")) else "")
    raise BadInput(f"{path} is not a DeepSpeed ZeRO checkpoint{hint}; expected {EXPECTED}")


def parse_input(text: str) -> tuple[Path | None, str | None, str | None]:
    """(local path, None, None) for an existing path or one starting with / ./ ../ ~; else (None, repo, revision)."""
    if text.startswith(("/", "./", "../", "~")) or (text.strip() and Path(text).expanduser().exists()):
        return Path(text).expanduser(), None, None
    match = REPO_RE.fullmatch(text)
    if not match:
        raise BadInput(f"--input {text!r} is neither an existing path nor a Hugging Face repo id (org/name[@revision])")
    return None, match.group(1), match.group(2)


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse a file, or a non-empty directory unless overwrite (which replaces only the files we write)."""
    if out.exists() and not out.is_dir():
        raise BadInput(f"--output {out} exists and is not a directory")
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise BadInput(f"--output {out} is not empty; pass --overwrite to replace the files consolidate writes "
                       "(other files are kept)")


def check_upload(repo: str, token: str | None) -> None:
    """Validate --output_repo and that a token is available to upload with."""
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", repo):
        raise BadInput(f"--output_repo {repo!r} is not a Hugging Face repo id (org/name)")
    if not token:
        raise BadInput(f"--output_repo {repo} needs a Hugging Face token to upload: set HF_TOKEN "
                       "(e.g. in your secrets file); nothing was done")


def bound_hub_requests() -> None:
    """Every huggingface_hub request without a timeout of its own gets $HPC_LAUNCH_HUB_TIMEOUT seconds (default 60)
    to connect and per read (a copy of hpc/jobside/sync.py's: this program runs alone)."""
    from huggingface_hub import get_session

    text = os.environ.get(HUB_TIMEOUT_ENV, "").strip()
    try:
        seconds = float(text) if text else 60.0
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise BadInput(f"{HUB_TIMEOUT_ENV}={text!r} is not a number of seconds above 0")

    def bounded(request: object) -> None:
        timeout = request.extensions.get("timeout") or {}  # type: ignore[attr-defined]
        request.extensions["timeout"] = {key: seconds if timeout.get(key) is None else timeout[key]  # type: ignore
                                         for key in ("connect", "read", "write", "pool")}

    session = get_session()
    hooks = session.event_hooks
    kept = [hook for hook in hooks["request"] if getattr(hook, "__name__", "") != "bounded"]
    session.event_hooks = {**hooks, "request": [*kept, bounded]}


def download(repo: str, revision: str | None) -> Path:
    """Snapshot a Hub repo into the normal HF cache (HF_ENDPOINT / HF_HUB_CACHE respected) and return its path."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
    log(f"downloading {repo}{'@' + revision if revision else ''} with huggingface_hub.snapshot_download")
    try:
        return Path(snapshot_download(repo, revision=revision))
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:  # gated repos included
        what = "revision" if isinstance(exc, RevisionNotFoundError) else "repo (or no access with this HF_TOKEN)"
        raise BadInput(f"Hugging Face {what} not found: {repo}{'@' + revision if revision else ''}") from None


def convert(ckpt: Path, tag: str, dtype: str, dest: Path) -> int:
    """Gather fp32 weights with DeepSpeed's zero_to_fp32, cast, save safetensors in dest; return #tensors saved."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from huggingface_hub import save_torch_state_dict
    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=tag)
    if dtype == "bf16":
        cast: dict[tuple, torch.Tensor] = {}  # tied tensors stay shared after the cast
        for name, t in state.items():
            if t.is_floating_point():
                state[name] = cast.setdefault((t.data_ptr(), t.shape, t.stride()), t.to(torch.bfloat16))
    # Shards above 5 GB; of tied tensors keeps one, the input embedding rather than lm_head (as transformers does).
    save_torch_state_dict(state, dest, shared_tensors_to_discard=[name for name in state if "lm_head" in name])
    return len(state)


def aux_files(ckpt: Path) -> dict[str, Path]:
    """Config/tokenizer files by name: the checkpoint's own, else its training output dir's (checkpoint-N/..)."""
    dirs = ([ckpt.parent] if re.fullmatch(r"checkpoint-\d+", ckpt.name) else []) + [ckpt]
    return {p.name: p for d in dirs for p in sorted(d.iterdir())
            if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in AUX_PATTERNS)}


def write_aux(files: dict[str, Path], dest: Path, dtype: str) -> None:
    """Copy the files into dest; config.json gets `dtype` (and `torch_dtype` if present) set to the output dtype."""
    for name, src in files.items():
        if name == "config.json":
            config = json.loads(src.read_text())
            config |= {key: DTYPES[dtype] for key in ("dtype", "torch_dtype") if key == "dtype" or key in config}
            (dest / name).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        else:
            (dest / name).write_bytes(src.read_bytes())


def upload(folder: Path, files: list[str], repo: str, public: bool, message: str, token: str) -> dict[str, str]:
    """Create the repo if needed and add one commit with exactly `files` (never deletes remote files)."""
    from huggingface_hub import HfApi
    api = HfApi(token=token)
    api.create_repo(repo, private=not public, exist_ok=True)
    info = api.upload_folder(folder_path=folder, repo_id=repo, commit_message=message, allow_patterns=files)
    return {"repo": repo, "commit_url": info.commit_url}


def run(args: argparse.Namespace) -> dict:
    """Do the work described by the parsed arguments; return the summary."""
    token = os.environ.get("HF_TOKEN") or None
    if args.output_repo:
        check_upload(args.output_repo, token)
    out = Path(args.output).expanduser()
    check_output_dir(out, args.overwrite)
    local, repo, revision = parse_input(args.input)
    if repo is not None or args.output_repo:
        bound_hub_requests()  # before any work: a bad setting costs nothing
    ckpt = find_zero_checkpoint(local if local is not None else download(repo, revision)).resolve()
    if out.resolve() in (ckpt, ckpt.parent):
        raise BadInput(f"--output {out} is the checkpoint or its training output dir; choose a separate directory")
    tag = zero_tag(ckpt)
    assert tag is not None
    log(f"checkpoint {ckpt} (tag {tag}) -> {out} as {DTYPES[args.dtype]}")
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".consolidate-", dir=out))  # save_torch_state_dict cleans its target dir
    try:
        n_tensors = convert(ckpt, tag, args.dtype, tmp)
        weights = sorted(p.name for p in tmp.iterdir())
        aux = aux_files(ckpt)
        write_aux(aux, tmp, args.dtype)
        for path in tmp.iterdir():
            path.chmod(0o644)  # safetensors writes 0600; eval jobs may run as another user
            os.replace(path, out / path.name)
    finally:
        for path in tmp.iterdir():
            path.unlink()
        tmp.rmdir()
    log(f"wrote {n_tensors} tensors to {', '.join(weights)}; copied {', '.join(aux) or 'nothing'}")
    if "config.json" not in aux:
        log("warning: no config.json found next to the checkpoint; the output has weights only")
    stale = sorted(p.name for p in out.iterdir() if WEIGHT_FILE_RE.fullmatch(p.name) and p.name not in weights)
    if stale:
        log(f"warning: left untouched older weight files {', '.join(stale)}; remove them if they are stale")
    uploaded = None
    if args.output_repo:
        message = args.commit_message or f"Upload consolidated {DTYPES[args.dtype]} weights from {ckpt.name}/{tag}"
        log(f"uploading to {args.output_repo} ({'public' if args.public else 'private'} if created)")
        uploaded = upload(out, weights + list(aux), args.output_repo, args.public, message, token or "")
    return {"input": args.input, "checkpoint": str(ckpt), "tag": tag, "output": str(out.resolve()),
            "dtype": DTYPES[args.dtype], "tensors": n_tensors, "weights": weights,
            "files_copied": list(aux), "uploaded": uploaded}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the CLI; usage errors print one `consolidate: error:` line and exit 2."""
    parser = argparse.ArgumentParser(prog="consolidate", description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="ZeRO checkpoint dir, training output dir, or org/name[@rev]")
    parser.add_argument("--output", required=True, help="directory for the safetensors model")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="weights dtype (default fp32)")
    parser.add_argument("--overwrite", action="store_true", help="replace the files it writes in a non-empty --output")
    parser.add_argument("--output_repo", help="upload the result to this Hub repo (needs HF_TOKEN)")
    parser.add_argument("--public", action="store_true", help="create --output_repo public (default private)")
    parser.add_argument("--commit_message", help="commit message for the upload")

    def error(message: str) -> None:
        print(f"consolidate: error: {message}", file=sys.stderr)
        sys.exit(2)

    parser.error = error  # type: ignore[method-assign]
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI entry: print progress and a final JSON summary line; return the exit code."""
    args = parse_args(argv)
    try:
        summary = run(args)
    except BadInput as exc:
        print(f"consolidate: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - one line with the reason
        print(f"consolidate: failed: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
