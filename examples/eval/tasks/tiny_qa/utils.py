"""Dataset loader for the tiny_qa / tiny_ppl lm-eval tasks (local JSONL, no network).

lm-eval resolves `!function utils.load_tiny_qa` relative to the YAML's directory, so this
module (and the JSONL next to it) is found whatever the current directory is. A
`dataset_path: json` + `dataset_kwargs: {data_files: tiny_qa.jsonl}` config would instead
resolve the relative path against the *current directory* (datasets' behaviour), which breaks
as soon as lm_eval runs from anywhere but this folder.

Pass `--metadata tiny_qa_data=/abs/file.jsonl` to evaluate another file with the same schema:
one JSON object a line with `question` (str), `choices` (list of str), `answer` (int index).
"""
from __future__ import annotations

import json
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().with_name("tiny_qa.jsonl")


def load_tiny_qa(tiny_qa_data: str | None = None, **_ignored):
    """Return {"test": Dataset} read from the JSONL file (in memory; no HF cache writes).

    lm-eval calls this with the task's metadata (version, CLI --metadata, model args) and
    dataset_kwargs as keyword arguments; everything but `tiny_qa_data` is ignored.
    """
    import datasets

    path = Path(tiny_qa_data) if tiny_qa_data else DEFAULT_DATA
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        raise ValueError(f"{path}: no rows")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
