"""transformers 4's question-answering pipeline on the tiny-gqa QA head, for test/inference/pipelines.test.ts.

transformers 5 dropped pipeline("question-answering"); this runs under transformers 4.x (a separate venv:
`python3 -m venv /tmp/tf4 && /tmp/tf4/bin/pip install torch==2.13.0 "transformers<5" safetensors`). The question and
the context as a pair through the tiny-gqa tokenizer (Metaspace: every word starts with ▁), the best spans with their
scores, token-aligned to words (align_to_words, the default) and not, as start/end characters and the context's text;
and a context over several windows (max_seq_len, doc_stride), with the windows the tokenizer cut.

    /tmp/tf4/bin/python scripts/reference/qa_pipeline_fixtures.py
"""
import json
import os
import warnings

import torch
import transformers
from transformers import NemotronForQuestionAnswering, PreTrainedTokenizerFast, pipeline

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures")
CASES = [("what stopped", "the stone stopped in a tin"), ("a tin", "it stopped the tin of stone"), ("stop", "stop it and stop"),
         ("the", "tin,stone.it")]


def main():
    warnings.simplefilter("ignore")
    # Its tokenizer_config names transformers 5's TokenizersBackend: the same tokenizer.json as transformers 4's fast class.
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(ROOT, "generation-processors", "tiny-gqa-tokenizer", "tokenizer.json"),
                                        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                                        model_input_names=["input_ids", "attention_mask"])
    model = NemotronForQuestionAnswering.from_pretrained(os.path.join(ROOT, "hf-reference", "tiny-gqa", "qa"), torch_dtype=torch.float32).eval()
    qa = pipeline("question-answering", model=model, tokenizer=tokenizer, device="cpu")
    out = {"transformers": transformers.__version__, "cases": []}
    for question, context in CASES:
        entry = {"question": question, "context": context}
        for name, kwargs in [("top1", {}), ("top3", {"top_k": 3}), ("top3_tokens", {"top_k": 3, "align_to_words": False}),
                             ("top2_max2", {"top_k": 2, "max_answer_len": 2})]:
            found = qa(question=question, context=context, **kwargs)
            found = found if isinstance(found, list) else [found]
            entry[name] = [{"score": float(f["score"]), "start": int(f["start"]), "end": int(f["end"]), "answer": f["answer"]} for f in found]
        out["cases"].append(entry)
    # A context over several windows (max_seq_len tokens, consecutive windows sharing doc_stride context tokens):
    # answers from every window, merged.
    out["windows"] = []
    long_context = "the stone stopped in a tin and it stopped the tin of stone a stone of tin stopped it and the tin stopped"
    for question, max_seq_len, doc_stride, top_k in [("what stopped", 24, 8, 3), ("a tin", 20, 5, 2), ("stop", 30, 12, 1)]:
        found = qa(question=question, context=long_context, max_seq_len=max_seq_len, doc_stride=doc_stride, top_k=top_k)
        found = found if isinstance(found, list) else [found]
        windows = tokenizer(question, long_context, truncation="only_second", max_length=max_seq_len, stride=doc_stride,
                            return_overflowing_tokens=True)["input_ids"]
        out["windows"].append({"question": question, "context": long_context, "max_seq_len": max_seq_len, "doc_stride": doc_stride,
                               "top_k": top_k, "windows": windows,
                               "answers": [{"score": float(f["score"]), "start": int(f["start"]), "end": int(f["end"]), "answer": f["answer"]} for f in found]})
    json.dump(out, open(os.path.join(ROOT, "pipelines", "qa.json"), "w"), indent=1)
    print(json.dumps(out)[:2000])


if __name__ == "__main__":
    main()
