"""The CPU table: every recipe's `--smoke` run and the runner overhead, on
each backend, in one run.

    python benchmarks/cpu_table.py                       # all recipes, all backends
    python benchmarks/cpu_table.py --recipes cats_vs_dogs --backends jax torch

Each cell is the wall time of a fresh `kerastune run RECIPE --smoke` process
(imports, tiny preset load, training, evaluation, saving), median of
`--repeats` runs; tiny presets are built once beforehand so no cell pays for
that. The last rows are `benchmarks/overhead.py`'s steps/s, runner over plain
`model.fit`, on each backend.
"""

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("jax", "tensorflow", "torch")


def run(cmd, env):
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start, proc.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    recipes = sorted(os.path.splitext(os.path.basename(p))[0]
                     for p in glob.glob(os.path.join(ROOT, "recipes", "*.py")))
    parser.add_argument("--recipes", nargs="*", default=recipes)
    parser.add_argument("--backends", nargs="*", default=list(BACKENDS))
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="kerastune-cpu-table-")
    env = dict(os.environ, KERASTUNE_CACHE=os.path.join(work, "cache"), TF_CPP_MIN_LOG_LEVEL="2")
    # Build the tiny presets once, outside the timed runs.
    run([sys.executable, "-c", "from kerastune_lab import testing\n"
         "for k in testing.PRESET_KINDS: testing.tiny_preset(k)"], env)

    cells = {}
    for recipe in args.recipes:
        for backend in args.backends:
            times = []
            for i in range(args.repeats):
                out = os.path.join(work, f"{recipe}-{backend}-{i}")
                seconds, _ = run([sys.executable, "-m", "kerastune_lab.cli", "run",
                                  f"recipes/{recipe}.py", "--smoke", "--backend", backend,
                                  "--output-dir", out], env)
                times.append(seconds)
            cells[recipe, backend] = statistics.median(times)
    overhead = {}
    for backend in args.backends:
        _, stdout = run([sys.executable, "benchmarks/overhead.py", "--backend", backend], env)
        row = next(line for line in stdout.splitlines() if line.startswith("train steps/s"))
        overhead[backend] = row.split()[-3:]

    print(f"{os.cpu_count()} CPU cores; wall seconds of `kerastune run RECIPE --smoke`")
    print(f"| recipe | {' | '.join(args.backends)} |")
    print(f"|---|{'---|' * len(args.backends)}")
    for recipe in args.recipes:
        print(f"| {recipe} --smoke (s) | "
              + " | ".join(f"{cells[recipe, b]:.1f}" for b in args.backends) + " |")
    for i, what in enumerate(("overhead.py runner steps/s", "overhead.py plain fit steps/s",
                              "overhead.py runner/plain")):
        print(f"| {what} | " + " | ".join(overhead[b][i] for b in args.backends) + " |")
    print(json.dumps({"smoke_seconds": {f"{r}/{b}": round(v, 2) for (r, b), v in cells.items()},
                      "overhead": overhead}))


if __name__ == "__main__":
    main()
