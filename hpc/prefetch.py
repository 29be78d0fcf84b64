"""Clusters without internet on compute nodes: fetch on the login node, make the job self-sufficient.

Every Hugging Face model and dataset a train config names is downloaded with huggingface_hub's
snapshot_download into the cluster's HF cache before anything is written or submitted, and the
resolved config points at the local snapshots. A cached revision is not downloaded again. This is
the one side effect of planning; a dry run only lists what it would fetch.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path

from hpc.errors import LaunchError
from hpc.hub_ids import hub_reference
from hpc.lf_data import dataset_info, names
from hpc.records import record

#: File types LLaMA-Factory reads from a dataset directory (its FILEEXT2TYPE).
DATA_SUFFIXES = {".json", ".jsonl", ".csv", ".parquet", ".arrow", ".txt"}
#: report_to integrations that need the network at run time (wandb has an offline mode).
NETWORK_REPORTERS = {"mlflow", "comet_ml", "clearml", "neptune", "dagshub", "dvclive", "swanlab", "azure_ml"}
#: Where a prefetched dataset came from, kept in the rewritten dataset_info.json entry.
SOURCE_KEY = "hub_source"
_SOURCE_KEYS = {"hf_hub_url", "ms_hub_url", "om_hub_url"}
_HUB_KEYS = _SOURCE_KEYS | {"subset", "split", "folder"}


@record(eq=True)
class Fetch:
    """A Hugging Face repo to download before jobs run on nodes without internet."""

    kind: str  # "model" or "dataset"
    repo_id: str
    revision: str | None
    purpose: str  # which config key or dataset asked for it


@record(eq=True, frozen=False)
class Localized:
    """What localizing a config produced: the new config, files and symlinks for the experiment."""

    config: dict[str, object]
    fetches: list[Fetch] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # relative path in the experiment -> target
    notes: list[str] = field(default_factory=list)


def cache_dir(env: Mapping[str, str]) -> Path | None:
    """The cluster's Hub cache from the dotenv: HF_HUB_CACHE, else HF_HOME/hub, else huggingface_hub's default."""
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"])
    return Path(env["HF_HOME"]) / "hub" if env.get("HF_HOME") else None


class Fetcher:
    """snapshot_download into one cache; in a dry run it only records what it would fetch."""

    def __init__(self, cache: Path | None, dry_run: bool, endpoint: str | None = None) -> None:
        self.cache, self.dry_run, self.endpoint = cache, dry_run, endpoint

    def __call__(self, fetch: Fetch) -> Path:
        where = self.cache or "the default Hub cache"
        if self.dry_run:
            print(f"prefetch (dry run): would fetch {fetch.kind} {fetch.repo_id} ({fetch.purpose}) into {where}")
            return Path(f"<{fetch.kind}:{fetch.repo_id}>")
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

        from hpc.jobside.sync import HUB_TIMEOUT, HUB_TIMEOUT_ENV, bound_hub_requests, env_seconds

        try:
            timeout = env_seconds(HUB_TIMEOUT_ENV, HUB_TIMEOUT)
        except ValueError as exc:
            raise LaunchError(f"{exc}; unset it or give seconds, e.g. {HUB_TIMEOUT_ENV}=120") from None
        bound_hub_requests(timeout)
        print(f"prefetch: {fetch.kind} {fetch.repo_id} ({fetch.purpose}) into {where}", flush=True)
        try:
            path = snapshot_download(fetch.repo_id, repo_type=fetch.kind, revision=fetch.revision,
                                     cache_dir=self.cache, endpoint=self.endpoint)
        except RepositoryNotFoundError:
            raise LaunchError(f"prefetch: {fetch.kind} {fetch.repo_id} not found on the Hub (or no access with "
                              "your HF_TOKEN); fix the name in the train config") from None
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
            if _timed_out(exc):
                raise LaunchError(f"prefetch: the Hub gave no answer within {timeout:g} s for {fetch.kind} "
                                  f"{fetch.repo_id}; nothing was submitted: try again, or wait longer with "
                                  f"{HUB_TIMEOUT_ENV}=SECONDS") from None
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LaunchError(f"prefetch: downloading {fetch.kind} {fetch.repo_id} failed ({first}); "
                              "nothing was submitted, try again") from None
        print(f"prefetch: {fetch.repo_id} -> {path}", flush=True)
        return Path(path)


def _timed_out(exc: BaseException | None) -> bool:
    """Whether a timeout (httpx's, or the socket's) is behind `exc`."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if "Timeout" in type(exc).__name__ or isinstance(exc, TimeoutError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _data_files(snapshot: Path) -> list[Path]:
    """The data files of a dataset snapshot: one file type, train files when the repo has splits."""
    files = [p for p in sorted(snapshot.rglob("*")) if p.is_file() and p.suffix in DATA_SUFFIXES]
    train = [p for p in files if "train" in p.relative_to(snapshot).as_posix()]
    files = train or files
    if not files:
        raise LaunchError(f"prefetch: dataset snapshot {snapshot} has no {'/'.join(sorted(DATA_SUFFIXES))} files")
    suffix = Counter(p.suffix for p in files).most_common(1)[0][0]
    return [p for p in files if p.suffix == suffix]


def localize(config: dict[str, object], workdir: Path, experiment_dir: Path, fetch: Fetcher,
             offline: bool, datasets: dict | None = None) -> Localized:
    """Fetch the Hub models and datasets of a LLaMA-Factory config and point it at the local copies.

    `datasets`: dataset_info entries already resolved (absolute file names), instead of the config's file.
    """
    out = Localized(config=dict(config))
    for key in ("model_name_or_path", "adapter_name_or_path"):
        refs = [(name, hub_reference(name, workdir)) for name in names(config.get(key))]
        if any(ref for _, ref in refs):
            paths = []
            for name, ref in refs:
                if ref:
                    out.fetches.append(Fetch("model", ref[0], ref[1], key))
                    paths.append(str(fetch(out.fetches[-1])))
                else:
                    paths.append(name)
            out.config[key] = ",".join(paths)
    used = names(config.get("dataset")) + names(config.get("eval_dataset"))
    base, info = (Path("/"), datasets) if datasets is not None else dataset_info(config, workdir)
    if info is None:
        out.notes.append(f"no {base}/dataset_info.json here: datasets were not checked for Hub downloads")
        info, used = {}, []
    if base and (missing := [n for n in used if n not in info]):
        raise LaunchError(f"dataset {missing[0]!r} is not in {base / 'dataset_info.json'}")
    entries = {name: info[name] if base else {"hf_hub_url": name} for name in used}
    if any(_SOURCE_KEYS & set(entry) for entry in entries.values()):
        new_info = {}
        for name, entry in entries.items():
            kept = {k: v for k, v in entry.items() if k not in _HUB_KEYS}
            if "hf_hub_url" in entry:
                ref = hub_reference(entry["hf_hub_url"], workdir) or (entry["hf_hub_url"], None)
                out.fetches.append(Fetch("dataset", ref[0], ref[1], f"dataset {name}"))
                snapshot = fetch(out.fetches[-1])
                files = [] if fetch.dry_run else _data_files(snapshot)
                for i, target in enumerate(files):
                    out.links[f"datasets/{name}/{i:04d}_{target.name}"] = str(target)
                kept["file_name"] = str(experiment_dir / "datasets" / name)
                kept[SOURCE_KEY] = str(entry["hf_hub_url"])  # LLaMA-Factory ignores it; run summaries read it
            elif "file_name" in entry and base is not None:
                kept["file_name"] = str(base / str(entry["file_name"]))
            else:
                raise LaunchError(f"dataset {name!r} comes from a hub other than Hugging Face; prefetch it by hand")
            new_info[name] = kept
        out.files["configs/dataset_info.json"] = json.dumps(new_info, indent=2) + "\n"
        out.config["dataset_dir"] = str(experiment_dir / "configs")
    if offline:
        _offline_settings(out)
    return out


def _offline_settings(out: Localized) -> None:
    """No pushes or network reporters from a compute node; pushes become deferred uploads."""
    config = out.config
    if config.get("push_to_hub"):
        config["push_to_hub"] = False
        out.notes.append("push_to_hub turned off on the compute node: the upload is deferred (python -m hpc.sync)")
    reporters = names(config.get("report_to"))
    kept = [r for r in reporters if r not in NETWORK_REPORTERS]
    if kept != reporters:
        config["report_to"] = ",".join(kept) or "none"
        out.notes.append(f"report_to: dropped {', '.join(sorted(set(reporters) - set(kept)))} (needs the internet)")
