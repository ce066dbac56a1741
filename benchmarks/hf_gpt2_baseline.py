"""Baseline for the GPT-2 row of benchmarks/table.py: Hugging Face
transformers' GPT2LMHeadModel (gpt2 base shape, random weights) trained in a
plain PyTorch loop, mixed bf16, on one GPU.

    python benchmarks/hf_gpt2_baseline.py                  # sequence 512, batch 8
    python benchmarks/hf_gpt2_baseline.py --batch 16 --seq 1024

../shared/bench has no GPT-2 baseline, so this one is written in the form of
its cls_baseline.py (a plain loop, not `Trainer`: the loop is the faster of
the two, so the ratio is not flattered). Prints one JSON line: median step
time, tokens/s and peak GPU memory over the timed steps. Needs torch with
CUDA and transformers.
"""

import argparse
import json
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    if not torch.cuda.is_available():
        raise SystemExit("hf_gpt2_baseline.py needs a CUDA GPU")
    model = GPT2LMHeadModel(GPT2Config(n_positions=max(1024, args.seq))).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    rng = np.random.default_rng(0)
    ids_host = torch.from_numpy(rng.integers(0, 50257, (args.batch, args.seq))).pin_memory()
    times = []
    for i in range(args.warmup + args.steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        ids = ids_host.cuda(non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    step = float(np.median(times))
    print(json.dumps(dict(baseline="hf-gpt2", step_s=round(step, 4),
                          per_s=round(args.batch * args.seq / step, 1), unit="tokens",
                          batch=args.batch, seq=args.seq,
                          peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))))


if __name__ == "__main__":
    main()
