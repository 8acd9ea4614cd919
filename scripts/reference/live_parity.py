"""Live reference for the parity harness: loads checkpoints that nemotron-tfjs saved, with transformers, and
records what every class computes on the given inputs (outputs, losses, gradients of the causal loss).

    python live_parity.py CASES.json OUT_DIR

CASES.json (written by test/reference/live-parity.test.ts) names the checkpoint folders and the inputs.
Writes OUT_DIR/expected.safetensors (float32 tensors) and OUT_DIR/expected.json (losses, versions).
"""
import json, os, sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import (NemotronForCausalLM, NemotronForQuestionAnswering, NemotronForSequenceClassification,
                          NemotronForTokenClassification, NemotronModel)


def load(cls, path):
    m = cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")  # noqa
    m.eval()
    return m


def main():
    cases = json.load(open(sys.argv[1]))
    out = sys.argv[2]
    ids = torch.tensor(cases["input_ids"])
    mask = torch.tensor(cases["attention_mask"])
    exp, meta = {}, {"versions": {"torch": torch.__version__, "transformers": transformers.__version__}}

    base = load(NemotronModel, cases["causal_dir"])
    with torch.no_grad():
        o = base(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    exp["base.last_hidden_state"] = o.last_hidden_state
    for i, h in enumerate(o.hidden_states):
        exp[f"base.hidden_states.{i}"] = h
    for i, a in enumerate(o.attentions):
        exp[f"base.attentions.{i}"] = a

    causal = load(NemotronForCausalLM, cases["causal_dir"])
    o = causal(input_ids=ids, attention_mask=mask, labels=torch.tensor(cases["causal_labels"]))
    exp["causal.logits"] = o.logits.detach()
    meta["causal_loss"] = o.loss.item()
    o.loss.backward()
    for name, p in causal.named_parameters():
        if p.grad is not None:
            exp[f"causal.grad.{name}"] = p.grad.detach().clone()

    # Greedy generation on a left-padded batch: the sequences, and every step's scores (the raw logits of greedy
    # decoding), which the TypeScript side replays token by token through its KV cache.
    gen = cases["generate"]
    with torch.no_grad():
        o = causal.generate(torch.tensor(gen["input_ids"]), attention_mask=torch.tensor(gen["attention_mask"]),
                            max_new_tokens=gen["max_new_tokens"], do_sample=False, output_scores=True,
                            return_dict_in_generate=True, pad_token_id=0, eos_token_id=None)
    meta["gen_sequences"] = o.sequences.tolist()
    exp["gen.scores"] = torch.stack(list(o.scores), 1)

    # Beam search on the same prompts, with an EOS id the beams do meet (the token greedy decoding chose second for
    # row 0): each setting's sequences and their scores.
    eos = meta["gen_sequences"][0][len(gen["input_ids"][0]) + 1]
    meta["beam_eos"] = eos
    for i, setting in enumerate(cases["beam"]):
        with torch.no_grad():
            o = causal.generate(torch.tensor(gen["input_ids"]), attention_mask=torch.tensor(gen["attention_mask"]),
                                max_new_tokens=setting["max_new_tokens"], do_sample=False, num_beams=setting["num_beams"],
                                num_return_sequences=setting["num_return_sequences"], length_penalty=setting["length_penalty"],
                                early_stopping=setting["early_stopping"], return_dict_in_generate=True, output_scores=True,
                                pad_token_id=0, eos_token_id=eos)
        meta[f"beam_{i}_sequences"] = o.sequences.tolist()
        meta[f"beam_{i}_scores"] = o.sequences_scores.tolist()

    for case in cases["seqcls"]:
        m = load(NemotronForSequenceClassification, case["dir"])
        labels = torch.tensor(case["labels"], dtype=torch.float32 if case["float_labels"] else torch.long)
        with torch.no_grad():
            o = m(input_ids=ids, attention_mask=mask, labels=labels)
        exp[f"seqcls.{case['name']}.logits"] = o.logits
        meta[f"seqcls_{case['name']}_loss"] = o.loss.item()

    m = load(NemotronForQuestionAnswering, cases["qa"]["dir"])
    with torch.no_grad():
        o = m(input_ids=ids, attention_mask=mask, start_positions=torch.tensor(cases["qa"]["start_positions"]),
              end_positions=torch.tensor(cases["qa"]["end_positions"]))
    exp["qa.start_logits"], exp["qa.end_logits"] = o.start_logits, o.end_logits
    meta["qa_loss"] = o.loss.item()

    m = load(NemotronForTokenClassification, cases["tokcls"]["dir"])
    with torch.no_grad():
        o = m(input_ids=ids, attention_mask=mask, labels=torch.tensor(cases["tokcls"]["labels"]))
    exp["tokcls.logits"] = o.logits
    meta["tokcls_loss"] = o.loss.item()

    os.makedirs(out, exist_ok=True)
    save_file({k: v.detach().float().contiguous().clone() for k, v in exp.items()}, os.path.join(out, "expected.safetensors"))
    json.dump(meta, open(os.path.join(out, "expected.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
