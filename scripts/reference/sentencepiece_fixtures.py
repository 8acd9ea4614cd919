"""A SentencePiece BPE model (tokenizer.model, no tokenizer.json, as older conversions of NeMo checkpoints ship) and
how transformers 5 encodes and decodes with it, for test/tokenizer-sentencepiece.test.ts. Needs `sentencepiece` and
`protobuf` (pip install sentencepiece protobuf) beside transformers.

    .venv-ref/bin/python scripts/reference/sentencepiece_fixtures.py
"""
import json
import os
import tempfile

import sentencepiece as spm
from transformers import AutoTokenizer

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures", "sentencepiece")
CORPUS = ["the stopped stone stood on the stony stop", "a tin of tea is in the tent", "stop it and stop it again",
          "nemotron models run in typescript", "the quick brown fox jumps over the lazy dog", "Hello world, hello there!"] * 20
TEXTS = ["the stopped stone", "Hello world!", "typescript é 日本", "  two spaces", "stony tent", "<s>stop</s> it",
         "jumps over\nthe dog", "unknown: zebra-quartz"]


def main():
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        open(corpus, "w").write("\n".join(CORPUS))
        spm.SentencePieceTrainer.train(input=corpus, model_prefix=os.path.join(OUT, "tokenizer"), vocab_size=360, model_type="bpe",
                                       byte_fallback=True, character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
                                       minloglevel=2, num_threads=1)
    os.remove(os.path.join(OUT, "tokenizer.vocab"))
    json.dump({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
               "eos_token": "</s>", "unk_token": "<unk>"}, open(os.path.join(OUT, "tokenizer_config.json"), "w"), indent=1)
    tokenizer = AutoTokenizer.from_pretrained(OUT)
    assert type(tokenizer).__name__ == "LlamaTokenizer", type(tokenizer)
    cases = [{"text": t, "ids": tokenizer.encode(t), "decoded": tokenizer.decode(tokenizer.encode(t), skip_special_tokens=True)} for t in TEXTS]
    json.dump({"vocab_size": len(tokenizer), "cases": cases}, open(os.path.join(OUT, "expected.json"), "w"), indent=1)
    for c in cases:
        print(c)


if __name__ == "__main__":
    main()
