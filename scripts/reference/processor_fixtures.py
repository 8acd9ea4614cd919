"""Reference data from transformers for the deterministic logits processors, for test/generation/processors.test.ts.

On each tiny fixture model (test/fixtures/hf-reference/<config>/causal-lm) and its left-padded prompt batch: greedy
decoding and beam search with no_repeat_ngram_size, bad_words_ids (a single token and a two-token sequence, both
taken from what unconstrained greedy decoding chooses, so that they bite) and the two combined with
repetition_penalty and min_new_tokens; sequence_bias, suppress_tokens, begin_suppress_tokens, forced_eos_token_id,
exponential_decay_length_penalty and min_length; stop_strings with greedy decoding and with beam search. Pads are token 0, as in
the prompts.

    .venv-ref/bin/python scripts/reference/processor_fixtures.py
"""
import json
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import NemotronForCausalLM, PreTrainedTokenizerFast

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures")
PIECES = ["▁the", "▁st", "op", "ped", "▁a", "in", "er", "▁sto", "p", "▁on", "ing", "▁to", "▁", "s", "t", "o", "e", "n", "a",
          "i", "r", "d", "g", "h", "l", "c", "u", "m", "▁stop", "ent", "▁w", "y", "f", "b", "k", "v", "x", "q", "j", "z",
          "w", "▁an", "ion", "▁f", "or", "es", "▁c", "ar", "▁and", "on", "▁is", "▁it", "ll", "at", "▁o", "ou", "▁of",
          "re", "en", "ed", "▁in", "▁s", "it", "is", "al", "▁b", "an", "▁p", "ic", "le", "▁m", "ro", "▁d", "ic", "▁h",
          "as", "▁re", "om", "▁l", "et", "ow", "▁e", "ve", "id", "ot", "ut", "▁n", "ch", "▁g", "ly", "im", "ig", "ad", "ur"]


def sentencepiece_style(vocab_size):
    """A byte-fallback-free SentencePiece-style BPE (Metaspace, decoder Replace ▁ + Fuse + Strip) of vocab_size ids:
    0 <pad>, 1 <unk>, 2 <s>, 3 </s>, then PIECES (single characters included, so any lowercase text encodes)."""
    tokens = ["<pad>", "<unk>", "<s>", "</s>"]
    for piece in PIECES:
        if piece not in tokens and len(tokens) < vocab_size:
            tokens.append(piece)
    assert len(tokens) == vocab_size, (len(tokens), vocab_size)
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, [], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(tokens[:4])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")

for name in ("tiny-gqa", "tiny-mha-bias"):
    source = os.path.join(ROOT, "hf-reference", name)
    expected = json.load(open(os.path.join(source, "expected.json")))
    model = NemotronForCausalLM.from_pretrained(os.path.join(source, "causal-lm"), torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    prompt, mask = expected["gen_batch_prompt"], expected["gen_batch_mask"]

    def run(**setting):
        setting = {"eos_token_id": None, **setting}
        with torch.no_grad():
            o = model.generate(torch.tensor(prompt), attention_mask=torch.tensor(mask), do_sample=False, pad_token_id=0,
                               max_new_tokens=12, **setting)
        return o.tolist()

    free = run()
    width = len(prompt[0])
    # Bad words that the unconstrained output contains: row 0's first new token; a bigram of row 1's continuation.
    bad = [[free[0][width]], free[1][width + 2:width + 4]]
    settings = [
        dict(no_repeat_ngram_size=2),
        dict(no_repeat_ngram_size=3, repetition_penalty=1.2),
        dict(bad_words_ids=bad),
        dict(bad_words_ids=bad, no_repeat_ngram_size=2, min_new_tokens=4, eos_token_id=free[0][width + 1]),
        dict(num_beams=3, no_repeat_ngram_size=2, num_return_sequences=2),
        dict(num_beams=2, bad_words_ids=bad, length_penalty=0.5),
        # sequence_bias, suppress_tokens, begin_suppress_tokens, forced_eos_token_id, exponential_decay_length_penalty,
        # min_length: each on its own, then together with beams.
        dict(sequence_bias=[[[free[0][width + 1]], -5.0], [[free[1][width], free[1][width + 1]], -8.0], [[free[0][width + 2]], 2.5]]),
        dict(suppress_tokens=[free[0][width], free[1][width + 2]]),
        dict(begin_suppress_tokens=[free[0][width], free[1][width]]),
        dict(forced_eos_token_id=5),
        dict(exponential_decay_length_penalty=[2, 3.0], eos_token_id=free[0][width + 6]),
        dict(min_length=width + 6, eos_token_id=free[0][width + 1]),
        dict(num_beams=3, sequence_bias=[[[free[0][width]], -4.0]], suppress_tokens=[free[1][width]], forced_eos_token_id=7,
             exponential_decay_length_penalty=[3, 2.0], eos_token_id=free[0][width + 5]),
    ]
    cases = [{"setting": {}, "sequences": free}] + [{"setting": s, "sequences": run(**s)} for s in settings]
    for c in cases[1:]:
        assert c["sequences"] != free or "num_beams" in c["setting"], f"{name}: {c['setting']} changed nothing"

    # stop_strings through a SentencePiece-style tokenizer over the model's vocabulary: a string that crosses the
    # boundary of row 0's 5th and 6th new tokens (the 6th completes it), one that never occurs, and the row-1 text of a
    # token with overhang (the string ends inside the token).
    tokenizer = sentencepiece_style(model.config.vocab_size)
    out_dir = os.path.join(ROOT, "generation-processors", f"{name}-tokenizer")
    tokenizer.save_pretrained(out_dir)
    pieces0 = [tokenizer.decode(free[0][width:width + k]) for k in (4, 6)]
    text0 = pieces0[1]
    cross = text0[max(0, len(pieces0[0]) - 2):len(pieces0[0]) + 2].strip() or text0[-3:]
    row1 = tokenizer.decode(free[1][width:width + 8])
    stops = [[cross, "zzzzqq"], [row1[-3:-1] if len(row1) > 3 else row1], [cross, row1[-3:-1]]]
    stop_cases = []
    # An EOS id (<unk>, never chosen here) makes transformers pad the rows that stopped; without one they run on.
    for stop, eos in [(stops[0], 1), (stops[1], 1), (stops[2], 1), (stops[2], None)]:
        with torch.no_grad():
            o = model.generate(torch.tensor(prompt), attention_mask=torch.tensor(mask), do_sample=False, pad_token_id=0, eos_token_id=eos,
                               max_new_tokens=12, stop_strings=stop, tokenizer=tokenizer)
        assert 1 not in sum(o[:, width:].tolist(), [])
        stop_cases.append({"stop_strings": stop, "eos_token_id": eos, "sequences": o.tolist()})
    # stop_strings with beam search: every candidate goes through the stopping criteria, and one that ends in a stop
    # string finishes as on EOS. The strings come from the hypotheses of a search without them, so that they bite.
    def beams(**setting):
        with torch.no_grad():
            o = model.generate(torch.tensor(prompt), attention_mask=torch.tensor(mask), do_sample=False, pad_token_id=0,
                               max_new_tokens=12, **setting)
        return o.tolist()

    # Candidates: 2–3 characters from inside the hypotheses' texts, best hypothesis first; each setting takes the first
    # (for the third, the first two) that change the result.
    free_beams = beams(num_beams=3, num_return_sequences=3, eos_token_id=1)
    texts = [tokenizer.decode(h[width:]).strip() for h in free_beams]
    candidates = [t[i:i + n] for t in texts for i in range(2, len(t) - 3, 3) for n in (2, 3) if t[i:i + n].strip() == t[i:i + n]]
    beam_stop_cases = []
    for count, setting in [(1, dict(num_beams=3, num_return_sequences=3, eos_token_id=1)),
                           (1, dict(num_beams=2, eos_token_id=None)),
                           (2, dict(num_beams=3, num_return_sequences=2, eos_token_id=1, length_penalty=0.5))]:
        unstopped, stop = beams(**setting), []
        for c in candidates:
            if c not in stop and beams(stop_strings=[c], tokenizer=tokenizer, **setting) != unstopped:
                stop.append(c)
                if len(stop) == count:
                    break
        assert len(stop) == count, f"{name}: no stop string changes {setting}"
        beam_stop_cases.append({"stop_strings": stop, "setting": setting,
                                "sequences": beams(stop_strings=stop, tokenizer=tokenizer, **setting)})
    json.dump({"prompt": prompt, "attention_mask": mask, "cases": cases, "stop_cases": stop_cases, "beam_stop_cases": beam_stop_cases},
              open(os.path.join(ROOT, "generation-processors", f"{name}.json"), "w"), indent=1)
    print(name, "stops", [(c["stop_strings"], [r[width:] for r in c["sequences"]]) for c in stop_cases])
    print(name, "beam stops", [(c["stop_strings"], [r[width:] for r in c["sequences"]]) for c in beam_stop_cases])
    print(name, "bad", bad, [c["sequences"][0][width:] for c in cases])
