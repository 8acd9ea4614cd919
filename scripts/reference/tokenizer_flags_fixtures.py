"""Which special tokens transformers adds around a text, for test/tokenizer-flags.test.ts.

transformers 5 reads a tokenizer.json's post-processor as is: tokenizer_config.json's add_bos_token / add_eos_token are
dropped when a tokenizer.json is there (tokenization_utils_base.from_pretrained), and a tokenizer.json without a
post-processor adds nothing. The tiny SentencePiece-style tokenizer of test/fixtures/tokenizer with three
post-processors (its BOS template, BOS and EOS, none) and the flags set, unset or contradicting them, under the class
Nemotron checkpoints name (PreTrainedTokenizerFast) and LlamaTokenizer: the ids of a text and of a pair of texts.

    .venv-ref/bin/python scripts/reference/tokenizer_flags_fixtures.py
"""
import copy
import json
import os
import tempfile

import transformers
from transformers import AutoTokenizer

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures")
TEXT, PAIR = "Hello world", "the cat"


def template(bos, eos):
    def seq(name, type_id):
        return ([{"SpecialToken": {"id": "<s>", "type_id": type_id}}] if bos else []) + [{"Sequence": {"id": name, "type_id": type_id}}] + \
            ([{"SpecialToken": {"id": "</s>", "type_id": type_id}}] if eos else [])
    specials = {}
    if bos:
        specials["<s>"] = {"id": "<s>", "ids": [2], "tokens": ["<s>"]}
    if eos:
        specials["</s>"] = {"id": "</s>", "ids": [3], "tokens": ["</s>"]}
    return {"type": "TemplateProcessing", "single": seq("A", 0), "pair": seq("A", 0) + seq("B", 1), "special_tokens": specials}


def main():
    base_json = json.load(open(os.path.join(ROOT, "tokenizer", "tokenizer.json")))
    base_config = json.load(open(os.path.join(ROOT, "tokenizer", "tokenizer_config.json")))
    posts = {"bos": template(True, False), "bos_eos": template(True, True), "none": None}
    flags = [{}, {"add_bos_token": True, "add_eos_token": False}, {"add_bos_token": False, "add_eos_token": True},
             {"add_bos_token": False, "add_eos_token": False}, {"add_bos_token": True, "add_eos_token": True}]
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for post_name, post in posts.items():
            for flag in flags:
                for cls in ["PreTrainedTokenizerFast", "LlamaTokenizer"]:
                    tokenizer_json = copy.deepcopy(base_json)
                    tokenizer_json["post_processor"] = post
                    config = {k: v for k, v in base_config.items() if k not in ("add_bos_token", "add_eos_token")}
                    config.update(flag)
                    config["tokenizer_class"] = cls
                    json.dump(tokenizer_json, open(os.path.join(tmp, "tokenizer.json"), "w"))
                    json.dump(config, open(os.path.join(tmp, "tokenizer_config.json"), "w"))
                    tokenizer = AutoTokenizer.from_pretrained(tmp)
                    cases.append({"post_processor": post_name, "flags": flag, "tokenizer_class": cls,
                                  "single": tokenizer(TEXT).input_ids, "pair": tokenizer(TEXT, PAIR).input_ids})
    out_dir = os.path.join(ROOT, "tokenizer-flags")
    os.makedirs(out_dir, exist_ok=True)
    json.dump({"transformers": transformers.__version__, "text": TEXT, "pair": PAIR, "post_processors": posts, "cases": cases},
              open(os.path.join(out_dir, "cases.json"), "w"), indent=1)
    print(f"{len(cases)} cases written to {out_dir}/cases.json")


if __name__ == "__main__":
    main()
