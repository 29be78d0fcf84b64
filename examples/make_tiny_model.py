#!/usr/bin/env python3
"""Make a tiny random Qwen2 model, a local BPE tokenizer and arithmetic SFT data, offline.

Writes (default DIR = build/tiny, relative to the current directory):
  DIR/model/  Qwen2ForCausalLM (hidden 64, 2 layers, untied embeddings) + ChatML tokenizer
  DIR/data/   tiny_train.json (56 rows), tiny_eval.json (8 rows), dataset_info.json
The data is alpaca-style and registered as `tiny_sft` / `tiny_eval` for LLaMA-Factory;
the tokenizer has <|endoftext|>, <|im_start|>, <|im_end|>, so LF's `qwen` template works.
Fixed seeds make the outputs deterministic; rerunning overwrites them. No network is used.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

SEED = 1234
N_TRAIN, N_EVAL = 56, 8
NUMBER_WORDS = "zero one two three four five six seven eight nine ten".split()
OPS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def all_examples() -> list[dict[str, str]]:
    """Every arithmetic question over 0..10 as an alpaca row, in a fixed order."""
    rows = []
    for op, fn in OPS.items():
        for a, wa in enumerate(NUMBER_WORDS):
            for b, wb in enumerate(NUMBER_WORDS):
                rows.append({"instruction": f"What is {wa} {op} {wb}?", "input": "",
                             "output": f"The answer is {fn(a, b)}."})
    return rows


def split_examples() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Deterministically shuffle all examples and return disjoint (train, eval) lists."""
    rows = all_examples()
    random.Random(SEED).shuffle(rows)
    return rows[:N_TRAIN], rows[N_TRAIN:N_TRAIN + N_EVAL]


def tokenizer_corpus(rows: list[dict[str, str]]) -> list[str]:
    """Text to train the BPE on: every Q/A in ChatML form plus plain numbers."""
    corpus = [f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
              f"<|im_start|>user\n{r['instruction']}<|im_end|>\n"
              f"<|im_start|>assistant\n{r['output']}<|im_end|>\n" for r in rows]
    corpus += [" ".join(str(n) for n in range(i, i + 10)) for i in range(-10, 101)]
    return corpus


def build_tokenizer(corpus: list[str]):
    """Train a ByteLevel BPE locally and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                     pad_token="<|endoftext|>",
                                     additional_special_tokens=["<|im_start|>"])
    hf_tok.chat_template = CHATML_TEMPLATE
    hf_tok.model_max_length = 512
    return hf_tok


def build_model(tok, out_dir: Path) -> int:
    """Save a randomly initialised tiny Qwen2 next to the tokenizer; return its parameter count."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(SEED)
    eos, pad = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=False,
                      bos_token_id=None, eos_token_id=eos, pad_token_id=pad)
    model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    for f in out_dir.iterdir():  # safetensors is written 0600; let other users (eval jobs) read it
        f.chmod(0o644)
    return sum(p.numel() for p in model.parameters())


def write_json(path: Path, obj: object) -> None:
    """Write pretty, stable JSON."""
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main() -> None:
    """Parse --out, then (re)create DIR/model and DIR/data."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/tiny"),
                        help="output directory (default: build/tiny)")
    out: Path = parser.parse_args().out
    model_dir, data_dir = out / "model", out / "data"
    for d in (model_dir, data_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)

    train, evaluation = split_examples()
    write_json(data_dir / "tiny_train.json", train)
    write_json(data_dir / "tiny_eval.json", evaluation)
    write_json(data_dir / "dataset_info.json", {"tiny_sft": {"file_name": "tiny_train.json"},
                                                "tiny_eval": {"file_name": "tiny_eval.json"}})
    tok = build_tokenizer(tokenizer_corpus(all_examples()))
    n_params = build_model(tok, model_dir)
    print(f"model: {model_dir} ({n_params:,} params, vocab {len(tok)}); "
          f"data: {data_dir} ({len(train)} train / {len(evaluation)} eval rows)")


if __name__ == "__main__":
    main()
