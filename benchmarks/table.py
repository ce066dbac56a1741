"""The benchmark table: each recipe's model at its real shape on jax,
tensorflow and torch, side by side with the native tool, in one run.

    python benchmarks/table.py                                   # every row, every backend (GPU)
    python benchmarks/table.py --rows lora resnet50 --backends jax torch
    python benchmarks/table.py --baselines /path/to/shared/bench  # where cls_baseline.py and
                                                                  # hf_peft_baseline.py are
    python benchmarks/table.py --tiny                            # CPU check: tiny shapes, ours only

| row | ours (per backend) | baseline |
|---|---|---|
| resnet50 | train_throughput.py resnet50, 224x224, batch 128 | cls_baseline.py torch-resnet (torchvision, plain loop) |
| distilbert | train_throughput.py distilbert, seq 512, batch 32 | cls_baseline.py hf-distilbert |
| gpt2 | train_throughput.py gpt2, seq 512, batch 8 | hf_gpt2_baseline.py (this folder) |
| lora | lora_throughput.py, TinyLlama-1.1B shape, r8 q/v, bf16, 8x512 | hf_peft_baseline.py |

Every cell is a fresh process (one backend each; nothing shared between
cells), its last JSON line read back; a cell that fails or times out is
printed as such with the reason, and the others go on. Mixed bfloat16
everywhere; random weights (speed does not depend on them). Prints a
markdown table (throughput, peak device memory, ratio to the baseline) and
the device and versions it ran on; `--json FILE` keeps the raw lines.
"""  # noqa: E501  (a markdown table row above: not broken)

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BACKENDS = ("jax", "tensorflow", "torch")
DEFAULT_BASELINES = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "bench")

# row: (what, our command after `python`, baseline command, baseline folder or None = here)
ROWS = {
    "resnet50": ("ResNet-50 224x224, batch 128, mixed bf16",
                 ["train_throughput.py", "resnet50"], ["cls_baseline.py", "torch-resnet"],
                 "shared"),
    "distilbert": ("DistilBERT seq 512, batch 32, mixed bf16",
                   ["train_throughput.py", "distilbert"], ["cls_baseline.py", "hf-distilbert"],
                   "shared"),
    "gpt2": ("GPT-2 causal LM seq 512, batch 8, mixed bf16",
             ["train_throughput.py", "gpt2"], ["hf_gpt2_baseline.py"], None),
    "lora": ("LoRA r8 q/v, TinyLlama-1.1B shape, bf16, 8x512",
             ["lora_throughput.py", "--quantize", "none"], ["hf_peft_baseline.py"], "shared"),
}
TINY = {  # --tiny: our side on CPU-sized shapes, a check that the scripts run
    "resnet50": ["--shape", "tiny", "--steps", "2", "--warmup", "1"],
    "distilbert": ["--shape", "tiny", "--steps", "2", "--warmup", "1"],
    "gpt2": ["--shape", "tiny", "--steps", "2", "--warmup", "1"],
    "lora": ["--shape", "tiny", "--seq", "32", "--batch", "2", "--steps", "2", "--warmup", "1"],
}


def run_cell(cmd, env=None, timeout=900):
    """Runs one benchmark process; returns (json dict, None) or (None, why)."""
    try:
        proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True,
                              env=dict(os.environ, **(env or {})), timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line), None
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return None, f"exit {proc.returncode}: {last[:120]}"


def throughput(result):
    """(items per second, unit) of one result line, ours or a baseline's."""
    if "tokens_per_s" in result:  # lora_throughput.py, hf_peft_baseline.py
        return float(result["tokens_per_s"]), "tokens"
    return float(result["per_s"]), result["unit"]


def cell_text(result, why, reference=None):
    if result is None:
        return f"not measured ({why})"
    value, unit = throughput(result)
    text = f"{value:,.0f} {unit}/s"
    peak = result.get("peak_gib")
    if peak is not None:
        text += f", {peak} GiB"
    if reference:
        text += f", {value / reference:.2f}x"
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--backends", nargs="*", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--baselines", default=DEFAULT_BASELINES,
                        help="Folder of cls_baseline.py and hf_peft_baseline.py.")
    parser.add_argument("--tiny", action="store_true",
                        help="Tiny shapes, our side only: checks the scripts on a CPU.")
    parser.add_argument("--timeout", type=int, default=900, help="Seconds a cell.")
    parser.add_argument("--json", default=None, help="Also write every raw line here.")
    args = parser.parse_args()

    raw, lines = [], []
    header = ("| work | baseline | "
              + " | ".join(f"kerastune_lab, {b}" for b in args.backends) + " |")
    lines += [header, "|" + "---|" * (2 + len(args.backends))]
    device = None
    for row in args.rows:
        what, ours, baseline, where = ROWS[row]
        if args.tiny:
            base, why = None, "--tiny: ours only"
        else:
            folder = args.baselines if where == "shared" else HERE
            base, why = run_cell([os.path.join(folder, baseline[0]), *baseline[1:]],
                                 timeout=args.timeout)
        raw.append({"row": row, "baseline": base, "why": why})
        reference = throughput(base)[0] if base else None
        cells = [f"{' '.join(baseline)}: {cell_text(base, why)}"]
        for backend in args.backends:
            cmd = [os.path.join(HERE, ours[0]), *ours[1:], "--backend", backend]
            result, why = run_cell(cmd + (TINY[row] if args.tiny else []),
                                   env={"TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=args.timeout)
            raw.append({"row": row, "backend": backend, "result": result, "why": why})
            device = device or (result or {}).get("device")
            cells.append(cell_text(result, why, reference))
        lines.append(f"| {what}{' (tiny shape)' if args.tiny else ''} | "
                     + " | ".join(cells) + " |")
        print(lines[-1], file=sys.stderr, flush=True)  # progress: a row as it finishes

    versions = {}
    for name in ("keras", "keras-hub", "jax", "tensorflow", "torch", "transformers", "peft"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # not installed here
            pass
    print(f"Device: {device}; " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print("Throughput, peak device memory, and ours over the baseline; "
          "medians over the timed steps.")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(raw, f, indent=2)


if __name__ == "__main__":
    main()
