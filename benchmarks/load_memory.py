"""Peak host memory and time of loading a Llama-2-7B-shaped preset quantized,
three ways side by side, each in a fresh process.

    python benchmarks/load_memory.py                       # 7B shape, built once into the cache
    python benchmarks/load_memory.py --layers 4            # 7B width, 4 layers (the per-layer part)
    python benchmarks/load_memory.py --shape tinyllama     # TinyLlama-1.1B shape
    python benchmarks/load_memory.py --preset DIR          # a KerasHub-format preset folder
    python benchmarks/load_memory.py --ways int8 int4      # a subset of the ways

| way | what runs in the child process |
|---|---|
| int8 | `finetune.quantize.load_quantized(CausalLM, dir, "int8", dtype="bfloat16")` |
| int4 | the same with "int4" |
| keras int8 | `CausalLM.from_preset(dir, dtype="bfloat16")` then `quantize(model, "int8")` |

Each row: peak resident memory of the child (`ru_maxrss`), its resident
memory after importing Keras and KerasHub (the runtime, before any weight),
seconds of the load alone, the weight bytes the loaded model holds, and the
preset's bytes over the load's seconds (GB/s) beside `dd` of the same files.
The files are evicted from the page cache (`posix_fadvise` DONTNEED) before
each row and before `dd`, so every row reads from the disk.

The preset (random bfloat16 weights, KerasHub's format, the layout
`save_to_preset` writes, two shards past 10 GB) is built without ever holding
the whole model: one transformer layer is saved by `save_to_preset`, and
its h5 groups are copied once per layer into the shards (h5py copies on
disk). Built once per shape into `--cache` (default /tmp/kt-bench-cache).
Prints a markdown table; `--json FILE` keeps the rows.
"""  # noqa: E501  (a markdown table row above: not broken)

import argparse
import glob
import json
import os
import resource
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {  # name: LlamaBackbone config (vocabulary, width, heads...), num_layers apart
    "7b": dict(vocabulary_size=32000, hidden_dim=4096, intermediate_dim=11008,
               num_query_heads=32, num_key_value_heads=32, num_layers=32),
    "tinyllama": dict(vocabulary_size=32000, hidden_dim=2048, intermediate_dim=5632,
                      num_query_heads=32, num_key_value_heads=4, num_layers=22),
}
WAYS = ("int8", "int4", "keras-int8")
SHARD_BYTES = 10 * 1024**3  # save_to_preset's default max_shard_size (10 GB)
GIB = 1024**3


def build_preset(folder, config):
    """Writes a `save_to_preset` folder of a LlamaBackbone(**config), random
    bfloat16 weights, holding one transformer layer in memory at most."""
    import h5py

    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras_hub

    layers = config["num_layers"]
    one = keras_hub.models.LlamaBackbone(**dict(config, num_layers=1), dtype="bfloat16")
    template = folder + ".one-layer"
    shutil.rmtree(template, ignore_errors=True)
    one.save_to_preset(template, max_shard_size=None)
    del one
    tmp = folder + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name in ("metadata.json",):
        shutil.copy(os.path.join(template, name), tmp)
    with open(os.path.join(template, "config.json")) as f:
        saved = json.load(f)
    saved["config"]["num_layers"] = layers
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(saved, f, indent=4)

    src = h5py.File(os.path.join(template, "model.weights.h5"), "r")
    layer_group = src["layers/llama_transformer_decoder"]
    per_layer = _group_bytes(layer_group)
    others = [name for name in src["layers"] if name != "llama_transformer_decoder"]
    total = _group_bytes(src) + (layers - 1) * per_layer
    weight_map, shard, shard_bytes, index = {}, None, SHARD_BYTES, -1

    def target(size):
        nonlocal shard, shard_bytes, index
        if shard is None or (total > SHARD_BYTES and shard_bytes + size > SHARD_BYTES):
            if shard is not None:
                shard.close()
            index += 1
            shard = h5py.File(os.path.join(tmp, f"model_{index:05}.weights.h5"), "w")
            shard.create_group("layers")
            src.copy(src["vars"], shard, "vars")
            shard_bytes = 0
        shard_bytes += size
        return shard

    for name in others:
        dst = target(_group_bytes(src["layers"][name]))
        src.copy(src["layers"][name], dst["layers"], name)
        _map(weight_map, dst, f"layers/{name}")
    for i in range(layers):
        name = "llama_transformer_decoder" + (f"_{i}" if i else "")
        dst = target(per_layer)
        src.copy(layer_group, dst["layers"], name)
        dst[f"layers/{name}/vars"].attrs["name"] = f"transformer_layer_{i}"
        _map(weight_map, dst, f"layers/{name}")
    shard.close()
    src.close()
    with open(os.path.join(tmp, "model.weights.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=4)
    shutil.rmtree(template)
    os.replace(tmp, folder)


def _group_bytes(group):
    import h5py

    sizes = []
    group.visititems(lambda _, obj: sizes.append(obj.nbytes)
                     if isinstance(obj, h5py.Dataset) else None)
    return sum(sizes)


def _map(weight_map, shard, path):
    """Names `shard` in `weight_map` for every "vars" group under `path`, as
    Keras' sharded store does ("/layers/.../vars": file)."""
    file = os.path.basename(shard.filename)
    weight_map[f"/{path}/vars"] = file
    shard[path].visit(lambda sub: weight_map.__setitem__(f"/{path}/{sub}", file)
                      if sub.split("/")[-1] == "vars" else None)


def weight_files(folder):
    return sorted(glob.glob(os.path.join(folder, "*.weights.h5")))


def evict(files):
    """Drops `files` from the page cache, so the next read comes from the disk."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def dd_rate(files):
    """GB/s of `dd` reading `files` from the disk (evicted first)."""
    evict(files)
    start = time.perf_counter()
    for path in files:
        subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=16M"], check=True,
                       capture_output=True)
    seconds = time.perf_counter() - start
    return sum(os.path.getsize(p) for p in files) / seconds / 1e9


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(way, folder):
    """One row, in this (fresh) process: prints one JSON line."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    sys.path.insert(0, ROOT)
    import keras_hub

    from kerastune_lab.finetune import quantize

    runtime = rss_bytes()
    start = time.perf_counter()
    if way == "keras-int8":
        model = keras_hub.models.CausalLM.from_preset(folder, dtype="bfloat16",
                                                      preprocessor=None)
        quantize.quantize(model, "int8")
    else:
        model = quantize.load_quantized(keras_hub.models.CausalLM, folder, way,
                                        dtype="bfloat16", preprocessor=None)
    seconds = time.perf_counter() - start
    weights = sum(int(v.numpy().nbytes) for v in model.weights)
    print(json.dumps({
        "way": way, "mode": quantize.quantization_mode(model), "seconds": seconds,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "runtime_rss": runtime, "end_rss": rss_bytes(), "weights": weights}))


def run_row(way, folder, timeout):
    evict(weight_files(folder))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", way,
                           "--preset", folder], capture_output=True, text=True,
                          timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"way": way, "error": f"exit {proc.returncode}: {tail[:200]}"}
    return json.loads(lines[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--layers", type=int, default=None,
                        help="transformer layers (default: the shape's own)")
    parser.add_argument("--preset", default=None, help="a preset folder (else built)")
    parser.add_argument("--cache", default="/tmp/kt-bench-cache")
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per row")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.preset)

    folder = args.preset
    if folder is None:
        config = dict(SHAPES[args.shape])
        config["num_layers"] = args.layers or config["num_layers"]
        folder = os.path.join(args.cache, f"llama-{args.shape}-{config['num_layers']}l-bf16")
        if not os.path.isdir(folder):
            print(f"building {folder} ...", flush=True)
            start = time.perf_counter()
            build_preset(folder, config)
            print(f"built in {time.perf_counter() - start:.0f} s", flush=True)
    files = weight_files(folder)
    size = sum(os.path.getsize(p) for p in files)
    rows = [run_row(way, folder, args.timeout) for way in args.ways]
    dd = dd_rate(files)
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)["config"]
    print(f"\npreset: {folder} ({config['num_layers']} layers, width "
          f"{config['hidden_dim']}, {size / 1e9:.2f} GB in {len(files)} file(s)); "
          f"`dd` reads it at {dd:.2f} GB/s\n")
    print("| way | peak RSS (GiB) | runtime RSS (GiB) | peak - runtime - weights (GiB) "
          "| weights (GiB) | load (s) | read GB/s | dd GB/s |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['way']} | failed: {row['error']} |||||||")
            continue
        extra = row["peak_rss"] - row["runtime_rss"] - row["weights"]
        print(f"| {row['way']} | {row['peak_rss'] / GIB:.2f} | {row['runtime_rss'] / GIB:.2f} "
              f"| {extra / GIB:.2f} | {row['weights'] / GIB:.2f} | {row['seconds']:.1f} "
              f"| {size / row['seconds'] / 1e9:.2f} | {dd:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": folder, "bytes": size, "dd_gbps": dd, "rows": rows}, f)


if __name__ == "__main__":
    main()
