"""Train datasets as upstream users name them: Hub ids with upstream's ShareGPT defaults.

Upstream's LLaMA-Factory fork reads `dataset: org/name` from the Hub (`dataset_dir: ONLINE`) as ShareGPT
(`conversations` of `{from, value}`), and takes the format as top-level keys (`formatting`, `messages`,
`role_tag`, ...). Stock LLaMA-Factory knows neither, so the launcher writes the equivalent
dataset_info.json entries into the experiment and removes those keys from the config.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

import yaml

from hpc import yamlio
from hpc.errors import LaunchError
from hpc.hub_ids import REPO_ID
from hpc.readers import read_json

#: The fork's top-level format keys -> where a dataset_info.json entry keeps them.
FORMAT_KEYS = {
    "formatting": ("formatting",), "subset": ("subset",), "messages": ("columns", "messages"),
    "system": ("columns", "system"), "prompt_column": ("columns", "prompt"), "query_column": ("columns", "query"),
    "response_column": ("columns", "response"), "history_column": ("columns", "history"),
    "role_tag": ("tags", "role_tag"), "content_tag": ("tags", "content_tag"), "user_tag": ("tags", "user_tag"),
    "assistant_tag": ("tags", "assistant_tag"),
}  # fmt: skip
#: What upstream assumes for a Hub dataset unless the config says otherwise.
SHAREGPT = {"formatting": "sharegpt", "messages": "conversations", "role_tag": "from", "content_tag": "value",
            "user_tag": "human", "assistant_tag": "gpt"}
INFO_REL = "configs/dataset_info.json"
_KEY_WORD = re.compile(r"--|[A-Za-z_][\w-]*=")  # starts the next key: --key or key=value


def names(value: object) -> list[str]:
    items = value if isinstance(value, list) else str(value or "").split(",")
    return [str(v).strip() for v in items if str(v).strip()]


def _apply(entry: dict, settings: Mapping[str, object]) -> dict:
    entry = json.loads(json.dumps(entry))  # a deep copy of plain JSON data
    for key, value in settings.items():
        *parents, leaf = FORMAT_KEYS[key]
        target = entry
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return entry


def dataset_info(config: Mapping[str, object], workdir: Path) -> tuple[Path | None, dict | None]:
    """(dataset dir, its dataset_info.json entries); (None, {}) for ONLINE; (dir, None) when there is no file."""
    dataset_dir = str(config.get("dataset_dir", "data"))
    if dataset_dir == "ONLINE":
        return None, {}
    path = (workdir / dataset_dir / "dataset_info.json").resolve()
    if not os.path.lexists(path):
        return path.parent, None
    return path.parent, read_dataset_info(path)


def read_dataset_info(path: Path) -> dict[str, dict]:
    """A dataset_info.json: dataset names -> entries; LaunchError (one line) for anything else."""
    info = read_json(path, "dataset_info.json", "LLaMA-Factory needs it to find the datasets; fix it",
                     shape="a JSON object mapping dataset names to entries")
    bad = next((name for name, entry in info.items() if not isinstance(entry, dict)), None)
    if bad is not None:
        raise LaunchError(f"dataset_info.json {path}: the entry of {bad!r} must be a JSON object such as "
                          '{"file_name": "data.json"}; fix the file')
    return info


def resolve_datasets(config: dict[str, object], workdir: Path, experiment_dir: Path) -> str | None:
    """Turn upstream-style datasets into dataset_info entries, in place. Returns the dataset_info.json text
    to write into the experiment (config's dataset_dir then points there), or None when nothing changed."""
    settings = {key: config.pop(key) for key in list(config) if key in FORMAT_KEYS}
    used = names(config.get("dataset")) + names(config.get("eval_dataset"))
    base, found = dataset_info(config, workdir)
    info = found or {}
    entries: dict[str, dict] = {}
    hub = False
    for name in used:
        if name in info:
            entry = dict(info[name])
            if "file_name" in entry and base is not None:
                entry["file_name"] = str(base / str(entry["file_name"]))
            entries[name] = _apply(entry, settings)
        elif REPO_ID.fullmatch(name.split("@")[0]) and not os.path.exists(workdir / name):
            entries[name] = _apply({"hf_hub_url": name}, {**SHAREGPT, **settings})
            hub = True
        elif base is not None and os.path.isfile(base / "dataset_info.json"):
            raise LaunchError(f"dataset {name!r} is not in {base / 'dataset_info.json'} and is not a Hub id "
                              "(org/name); add it there or name a Hub dataset")
    if not hub and not settings:
        return None
    config["dataset_dir"] = str(experiment_dir / "configs")
    return json.dumps(entries, indent=2) + "\n"


def parse_extra_args(text: str | None) -> dict[str, object]:
    """--train_extra_args "--key value --flag key2=value": extra LLaMA-Factory keys, values read as YAML."""
    try:
        words = shlex.split(text or "")
    except ValueError as exc:
        raise LaunchError(f"--train_extra_args {text!r}: {exc}; quote values with spaces once") from None
    result: dict[str, object] = {}
    i = 0
    while i < len(words):
        word = words[i]
        key, eq, value = word.removeprefix("--").partition("=")
        if not eq and word.startswith("--"):
            has_value = i + 1 < len(words) and not _KEY_WORD.match(words[i + 1])
            value, i = (words[i + 1], i + 1) if has_value else ("true", i)
        elif not eq:
            raise LaunchError(f"--train_extra_args: {word!r} is not KEY=VALUE or --KEY VALUE")
        try:
            result[key.replace("-", "_")] = yamlio.load(value) if value else ""
        except yaml.YAMLError as exc:
            raise LaunchError(f"--train_extra_args: the value of {key} is not valid YAML ({yamlio.describe(exc)}); "
                              "quote it so that it reads as one YAML value") from None
        i += 1
    return result
