#!/usr/bin/env python3
"""Perplexity of a causal LM on the assistant answers of alpaca-style rows (the local cluster's eval harness).

  python eval_ppl.py --model DIR --data FILE.json --output RESULT.json [--max_examples N]

Each row {"instruction", "input", "output"[, "system"]} is formatted like LLaMA-Factory's `qwen`
template (ChatML with its default system prompt); only the answer tokens ("{output}<|im_end|>\\n")
are scored. eval_loss is the mean token cross-entropy over all answer tokens, perplexity its exp.
The model runs on CPU in float32 and is loaded from local files only. Exit 2 on a missing model/data.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def chatml(row: dict) -> tuple[str, str]:
    """(prompt, answer) as LLaMA-Factory's qwen template renders an alpaca row."""
    query = row["instruction"] + ("\n" + row["input"] if row.get("input") else "")
    prompt = (f"<|im_start|>system\n{row.get('system') or QWEN_SYSTEM}<|im_end|>\n"
              f"<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n")
    return prompt, f"{row['output']}<|im_end|>\n"


def fail(message: str) -> None:
    print(f"eval_ppl: error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="local Hugging Face model directory")
    parser.add_argument("--data", type=Path, required=True, help="alpaca-style JSON list of rows")
    parser.add_argument("--output", type=Path, required=True, help="where to write the result JSON")
    parser.add_argument("--max_examples", type=int, default=None, help="score only the first N rows")
    args = parser.parse_args()
    start = time.monotonic()
    if not (args.model / "config.json").is_file():
        fail(f"model {args.model} not found (expected a directory with config.json)")
    try:
        rows = json.loads(args.data.read_text())
    except (OSError, ValueError) as exc:
        fail(f"data {args.data} not found or not JSON ({type(exc).__name__})")
    if not isinstance(rows, list) or not rows or not all(
            isinstance(row, dict) and {"instruction", "output"} <= row.keys() for row in rows):
        fail(f"data {args.data} must be a non-empty JSON list of alpaca rows (instruction, output)")
    rows = rows[: args.max_examples]

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(args.model, local_files_only=True, dtype=torch.float32).eval()
    total_loss, total_tokens = 0.0, 0
    with torch.no_grad():
        for row in rows:
            prompt, answer = chatml(row)  # encoded separately, as LLaMA-Factory does
            p_ids = tokenizer.encode(prompt, add_special_tokens=False)
            a_ids = tokenizer.encode(answer, add_special_tokens=False)
            ids = torch.tensor([p_ids + a_ids])
            logits = model(input_ids=ids).logits[0, len(p_ids) - 1 : -1].float()
            total_loss += torch.nn.functional.cross_entropy(logits, ids[0, len(p_ids):], reduction="sum").item()
            total_tokens += len(a_ids)
    loss = total_loss / total_tokens
    result = {"model": str(args.model.resolve()), "data": str(args.data.resolve()), "examples": len(rows),
              "eval_loss": round(loss, 6), "perplexity": round(math.exp(loss), 4),
              "seconds": round(time.monotonic() - start, 2)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
