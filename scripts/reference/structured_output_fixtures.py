"""Grammar-constrained decoding as transformers + xgrammar run it, for test/generation/structured-output.test.ts.

xgrammar is the engine vLLM uses for structured outputs (response_format json_object / json_schema, guided grammars);
its transformers integration is a LogitsProcessor (xgrammar.contrib.hf). This builds a SentencePiece-style tokenizer
of the tiny fixture models' 96 ids that spells JSON (ByteFallback in its decoder, as Llama/Nemotron tokenizers have),
then records, on each tiny model and its left-padded prompt batch, greedy decoding under: the builtin JSON grammar, two
JSON schemas and an EBNF grammar — and what xgrammar detects of the tokenizer (vocab type, prefix space).

    .venv-ref/bin/pip install xgrammar   # not in scripts/reference-venv.sh: only this script needs it (it pulls triton)
    .venv-ref/bin/python scripts/reference/structured_output_fixtures.py
"""
import json
import os

import torch
import xgrammar as xgr
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from fixture_models import FIXTURES, tiny_causal_lm

OUT = os.path.join(FIXTURES, "structured-output")
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
PIECES = (["▁"] + list("abcdefghijklmnopqrstuvwxyz0123456789") + list('{}[]":,.-_')
          + ['{"', '":', '",', '"}', '▁"', "true", "false", "null", "name", "age", "▁the", "in", "er", "on", "an", "▁a",
             "es", "▁{", "},", "],", "▁[", "00", "10", "ok", "yes", "no", "may", "be", "id", "ing", "▁is", "at", "ed",
             "or", "▁t", "▁s", "re", "ar", "al", "en", "ic", "it", "▁n", "▁y", "st"])
TOKENS = SPECIALS + PIECES
assert len(TOKENS) == 96, len(TOKENS)


def tokenizer():
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(TOKENS)}, [], unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")


GRAMMARS = {
    "json_object": {"kind": "builtin_json"},
    "person": {"kind": "json_schema", "schema": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                                                 "required": ["name", "age"], "additionalProperties": False}},
    "flags": {"kind": "json_schema", "schema": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3}},
    "choice": {"kind": "ebnf", "grammar": 'root ::= "yes" | "no" | "maybe"'},
    # Regexes (vLLM's structured_outputs.regex): xgrammar's compile_regex here; regexToEbnf + the EBNF compiler in TypeScript.
    "phone": {"kind": "regex", "regex": r"\d{3}-\d{4}"},
    "words": {"kind": "regex", "regex": r"(yes|no|maybe)\.?( [a-z]+){1,3}"},
    "quoted": {"kind": "regex", "regex": r'"[^"]{2,5}"(,\s*\w+)*'},
    "mixed": {"kind": "regex", "regex": r"[a-f0-9]{2,}\.(ab|c.)?x*"},
}

hf_tokenizer = tokenizer()
os.makedirs(OUT, exist_ok=True)
hf_tokenizer.save_pretrained(os.path.join(OUT, "tokenizer"))
out = {"grammars": GRAMMARS, "models": {}}
for name in ("tiny-gqa", "tiny-mha-bias"):
    model, expected = tiny_causal_lm(name)
    info = xgr.TokenizerInfo.from_huggingface(hf_tokenizer, vocab_size=model.config.vocab_size, stop_token_ids=[3])
    out["tokenizer_info"] = {"vocab_type": info.vocab_type.name.lower(), "add_prefix_space": info.add_prefix_space}
    compiler = xgr.GrammarCompiler(info)
    prompt, mask = expected["gen_batch_prompt"], expected["gen_batch_mask"]
    cases = {}
    for key, spec in GRAMMARS.items():
        if spec["kind"] == "builtin_json":
            compiled = compiler.compile_builtin_json_grammar()
        elif spec["kind"] == "json_schema":
            compiled = compiler.compile_json_schema(json.dumps(spec["schema"]), any_whitespace=True)
        elif spec["kind"] == "regex":
            compiled = compiler.compile_regex(spec["regex"])
        else:
            compiled = compiler.compile_grammar(spec["grammar"])
        with torch.no_grad():
            o = model.generate(torch.tensor(prompt), attention_mask=torch.tensor(mask), do_sample=False, pad_token_id=0, eos_token_id=3,
                               max_new_tokens=24, logits_processor=[xgr.contrib.hf.LogitsProcessor(compiled)])
        rows = o.tolist()
        cases[key] = {"sequences": rows, "texts": [hf_tokenizer.decode(r[len(prompt[0]):], skip_special_tokens=True) for r in rows]}
    out["models"][name] = {"prompt": prompt, "attention_mask": mask, "cases": cases}

with open(os.path.join(OUT, "expected.json"), "w") as f:
    json.dump(out, f, indent=1)
print(json.dumps(out["tokenizer_info"]))
for name, m in out["models"].items():
    for key, case in m["cases"].items():
        print(name, key, [t for t in case["texts"]])
