"""Localizing a LLaMA-Factory config for an offline cluster, with a recording fetcher (no network)."""

import json
from pathlib import Path

import pytest

from hpc.errors import LaunchError
from hpc.hub_ids import hub_reference
from hpc.prefetch import Fetch, Fetcher, _data_files, localize


class FakeFetcher(Fetcher):
    """Makes a snapshot directory per repo instead of downloading."""

    def __init__(self, root: Path, files: dict[str, list[str]] | None = None) -> None:
        super().__init__(cache=root, dry_run=False)
        self.root, self.files, self.calls = root, files or {}, []

    def __call__(self, fetch: Fetch) -> Path:
        self.calls.append(fetch)
        snapshot = self.root / fetch.kind / fetch.repo_id.replace("/", "--")
        for rel in self.files.get(fetch.repo_id, []):
            (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / rel).write_text("[]")
        snapshot.mkdir(parents=True, exist_ok=True)
        return snapshot


@pytest.fixture
def workdir(tmp_path):
    data = tmp_path / "work" / "data"
    data.mkdir(parents=True)
    (data / "local.json").write_text("[]")
    (data / "dataset_info.json").write_text(json.dumps({
        "hub": {"hf_hub_url": "org/hubdata", "split": "train", "formatting": "sharegpt"},
        "mine": {"file_name": "local.json"},
        "ms": {"ms_hub_url": "x/y"},
    }))
    (tmp_path / "work" / "models" / "m").mkdir(parents=True)
    return tmp_path / "work"


def test_hub_reference_tells_repos_from_local_paths(workdir):
    assert hub_reference("org/model", workdir) == ("org/model", None)
    assert hub_reference("org/model@v2", workdir) == ("org/model", "v2")
    assert hub_reference("models/m", workdir) is None  # exists under the workdir
    assert hub_reference("/abs/path", workdir) is None and hub_reference("./x/y", workdir) is None
    assert hub_reference("justaname", workdir) is None


def test_models_and_datasets_point_at_local_copies(workdir, tmp_path):
    fetch = FakeFetcher(tmp_path / "cache", {"org/hubdata": ["data/train-0.parquet", "data/test-0.parquet",
                                                              "README.md"]})
    exp = tmp_path / "exp"
    config = {"model_name_or_path": "org/base", "adapter_name_or_path": "models/m,org/lora", "dataset": "hub,mine",
              "dataset_dir": "data", "report_to": "wandb,mlflow", "push_to_hub": True}
    out = localize(config, workdir, exp, fetch, offline=True)
    assert [(f.kind, f.repo_id) for f in fetch.calls] == [("model", "org/base"), ("model", "org/lora"),
                                                          ("dataset", "org/hubdata")]
    assert out.config["model_name_or_path"] == str(tmp_path / "cache/model/org--base")
    assert out.config["adapter_name_or_path"] == f"models/m,{tmp_path / 'cache/model/org--lora'}"
    assert out.config["dataset_dir"] == str(exp / "configs")
    info = json.loads(out.files["configs/dataset_info.json"])
    assert info == {"hub": {"formatting": "sharegpt", "file_name": str(exp / "datasets/hub"),
                            "hub_source": "org/hubdata"},
                    "mine": {"file_name": str(workdir / "data/local.json")}}
    assert out.links == {"datasets/hub/0000_train-0.parquet": str(tmp_path / "cache/dataset/org--hubdata/data/train-0.parquet")}
    assert out.config["push_to_hub"] is False and out.config["report_to"] == "wandb"
    assert len(out.notes) == 2 and config["push_to_hub"] is True  # the input is not modified


def test_nothing_on_the_hub_means_nothing_changes(workdir, tmp_path):
    fetch = FakeFetcher(tmp_path / "cache")
    config = {"model_name_or_path": "models/m", "dataset": "mine", "dataset_dir": "data"}
    out = localize(config, workdir, tmp_path / "exp", fetch, offline=True)
    assert out.config == config and fetch.calls == [] and out.files == {} and out.links == {}


def test_online_dataset_dir_names_hub_datasets(workdir, tmp_path):
    fetch = FakeFetcher(tmp_path / "cache", {"org/a": ["a.jsonl"]})
    out = localize({"model_name_or_path": "models/m", "dataset": "org/a", "dataset_dir": "ONLINE"}, workdir,
                   tmp_path / "exp", fetch, offline=False)
    assert [f.repo_id for f in fetch.calls] == ["org/a"] and list(out.links) == ["datasets/org/a/0000_a.jsonl"]


@pytest.mark.parametrize(
    "config, message",
    [
        ({"dataset": "nosuch", "dataset_dir": "data"}, "dataset 'nosuch' is not in"),
        ({"dataset": "ms", "dataset_dir": "data"}, "comes from a hub other than Hugging Face"),
    ],
)
def test_dataset_problems(workdir, tmp_path, config, message):
    with pytest.raises(LaunchError, match=message):
        localize({"model_name_or_path": "models/m", **config}, workdir, tmp_path / "exp",
                 FakeFetcher(tmp_path / "cache"), offline=True)


def test_data_files_prefer_train_split_and_one_type(tmp_path):
    for rel in ("data/train-00.parquet", "data/train-01.parquet", "data/test-00.parquet", "train.csv", "README.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert [p.name for p in _data_files(tmp_path)] == ["train-00.parquet", "train-01.parquet"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("x")
    with pytest.raises(LaunchError, match=f"dataset snapshot {empty} has no"):
        _data_files(empty)


def test_dry_run_fetcher_lists_and_returns_a_placeholder(capsys):
    path = Fetcher(cache=Path("/cache"), dry_run=True)(Fetch("model", "org/m", None, "model_name_or_path"))
    assert path == Path("<model:org/m>")
    assert "would fetch model org/m (model_name_or_path) into /cache" in capsys.readouterr().out
