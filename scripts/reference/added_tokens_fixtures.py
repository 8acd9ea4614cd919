"""Added-token reference data from transformers, for test/tokenizer-added-tokens.test.ts.

The tiny SentencePiece-style tokenizer of test/fixtures/tokenizer, read from its tokenizer.json as is (tokenizer_class
PreTrainedTokenizerFast: transformers 5 would otherwise rebuild a LlamaTokenizer's pipeline from its class), then
add_tokens (normalized tokens: new words, one that is already in the vocabulary) and add_special_tokens (a new pad
token and additional special tokens): the counts, the ids, and the encoding and decoding of texts around them.

    .venv-ref/bin/python scripts/reference/added_tokens_fixtures.py
"""
import json
import os
import shutil
import tempfile

from transformers import AutoTokenizer

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures")
TEXTS = ["hello world", "a <tool> call newword", "<|im_start|>user hi<|im_end|>", "x<tool>y", "the newwords",
         "<|pad|><|pad|>Hello", "newword<|im_end|>newword", "Hello, the world!"]


def main():
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "tokenizer")
        shutil.copytree(os.path.join(ROOT, "tokenizer"), source)
        config_file = os.path.join(source, "tokenizer_config.json")
        config = json.load(open(config_file))
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        json.dump(config, open(config_file, "w"))
        tokenizer = AutoTokenizer.from_pretrained(source)
        before = len(tokenizer)
        added = tokenizer.add_tokens(["hello", "<tool>", "newword", "▁the"])
        special = tokenizer.add_special_tokens({"pad_token": "<|pad|>", "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        out = {
            "length_before": before, "added": added, "added_special": special, "length": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id, "all_special_ids": sorted(tokenizer.all_special_ids),
            "ids": {t: tokenizer.convert_tokens_to_ids(t) for t in ["hello", "<tool>", "newword", "<|pad|>", "<|im_start|>", "<|im_end|>"]},
            "texts": [{"text": t, "ids": tokenizer.encode(t), "decoded": tokenizer.decode(tokenizer.encode(t)),
                       "decoded_skip_special": tokenizer.decode(tokenizer.encode(t), skip_special_tokens=True)} for t in TEXTS],
        }
    os.makedirs(os.path.join(ROOT, "added-tokens"), exist_ok=True)
    json.dump(out, open(os.path.join(ROOT, "added-tokens", "added-tokens.json"), "w"), indent=1)
    for t in out["texts"]:
        print(t)


if __name__ == "__main__":
    main()
