"""transformers + PyTorch side of benchmarks/run.ts: the same weights, inputs and measurements.

Usage: python torch_bench.py --weights DIR --inputs inputs.json --out result.json [--threads 2]
The weights folder is what NemotronForCausalLM.savePretrained wrote; inputs.json holds the token ids
run.ts uses (prefill ids, one prompt per decode batch size, training ids) and the decode length.
"""
import argparse
import json
import os
import platform
import sys
import time


def vm_hwm_bytes():
    """Peak RSS since the last reset (Linux VmHWM), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


TRAIN_STEPS = 5
TIMED_STEPS = 3


def time_training(model, ids):
    """TRAIN_STEPS steps (loss, backward, AdamW over the trainable parameters); the median of the last TIMED_STEPS counts,
    as run.ts times ours (the first allocates the optimizer state)."""
    import torch  # imported in main() too: torch loads only once the arguments are read

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.01)
    times = []
    for _ in range(TRAIN_STEPS):
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    counted = sorted(times[-TIMED_STEPS:])[TIMED_STEPS // 2]
    return {"tokens": ids.numel(), "seconds": counted, "warmup_seconds": times[0], "tokens_per_s": ids.numel() / counted, "loss": float(loss.detach())}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", required=True)
    p.add_argument("--inputs", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-train", action="store_true")
    a = p.parse_args()

    import torch
    import transformers
    from transformers import NemotronForCausalLM
    from transformers.generation.streamers import BaseStreamer

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    with open(a.inputs) as f:
        inputs = json.load(f)
    result = {
        "backend": "torch",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()},
        "threads": torch.get_num_threads(),
        "errors": {},
    }
    peaks = {}

    t = time.perf_counter()
    model = NemotronForCausalLM.from_pretrained(a.weights, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    result["load_seconds"] = time.perf_counter() - t
    peaks["load"] = vm_hwm_bytes()

    # Prefill: one forward over the whole prompt, logits of the last position only, after one warm-up.
    reset_hwm()
    ids = torch.tensor(inputs["prefill"], dtype=torch.long)
    with torch.inference_mode():
        model(input_ids=ids, logits_to_keep=1, use_cache=False)
        t = time.perf_counter()
        out = model(input_ids=ids, logits_to_keep=1, use_cache=False)
        dt = time.perf_counter() - t
    del out
    result["prefill"] = {"tokens": ids.numel(), "seconds": dt, "tokens_per_s": ids.numel() / dt}
    peaks["prefill"] = vm_hwm_bytes()

    # Decode: greedy generate; a streamer stamps the first new token (end of prefill) and the end.
    class Stamps(BaseStreamer):
        def __init__(self):
            self.calls = []

        def put(self, value):
            self.calls.append(time.perf_counter())

        def end(self):
            self.end_time = time.perf_counter()

    max_new = inputs["maxNewTokens"]
    result["decode"] = {}
    reset_hwm()
    pad = model.generation_config.eos_token_id
    if isinstance(pad, list):
        pad = pad[0]
    for batch, prompt in inputs["decode"].items():
        prompt_ids = torch.tensor(prompt, dtype=torch.long)
        kwargs = dict(do_sample=False, use_cache=True, pad_token_id=pad, attention_mask=torch.ones_like(prompt_ids))
        with torch.inference_mode():
            model.generate(prompt_ids, max_new_tokens=2, min_new_tokens=2, **kwargs)  # warm-up
            s = Stamps()
            t = time.perf_counter()
            seq = model.generate(prompt_ids, max_new_tokens=max_new, min_new_tokens=max_new, streamer=s, **kwargs)
            total = time.perf_counter() - t
        # calls[0] is the prompt, calls[1] the first new token (after the prefill), calls[-1] the last token.
        first = s.calls[1]
        decode_s = s.calls[-1] - first
        b = int(batch)
        result["decode"][batch] = {
            "batch": b,
            "new_tokens": max_new,
            "first_token_seconds": first - t,
            "decode_seconds": decode_s,
            "total_seconds": total,
            "tokens_per_s": (max_new - 1) * b / decode_s if decode_s > 0 else None,
            "tokens": seq[0, prompt_ids.shape[1]:].tolist(),
        }
    peaks["decode"] = vm_hwm_bytes()

    # Training: causal-LM loss, backward and an AdamW step on batch 1, TRAIN_STEPS times, the last one timed; then the
    # same with PEFT's LoRA (r 16, alpha 32 on every projection, the base frozen), as run.ts does.
    if not a.skip_train:
        reset_hwm()
        train_ids = torch.tensor(inputs["train"], dtype=torch.long)
        try:
            model.train()
            result["train"] = time_training(model, train_ids)
        except Exception as e:  # e.g. out of memory
            result["errors"]["train"] = f"{type(e).__name__}: {e}"
        peaks["train"] = vm_hwm_bytes()
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            result["errors"]["lora_train"] = "peft is not installed in the reference venv (pip install peft)"
        else:
            try:
                lora = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM"))
                lora.train()
                result["lora_train"] = time_training(lora, train_ids)
                result["versions"]["peft"] = __import__("peft").__version__
            except Exception as e:
                result["errors"]["lora_train"] = f"{type(e).__name__}: {e}"

    result["peak_rss_bytes"] = max(peaks.values())
    result["peak_rss_by_phase"] = peaks
    with open(a.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    sys.exit(main())
