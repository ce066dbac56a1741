"""What the TensorBoard logs of every run cost: `fit_resumable` with and
without them, side by side, on a small dense model (so the per-step callback
work is as visible as it can be), with a `resume.Backup` in both, as every
recipe has.

    python benchmarks/tensorboard_overhead.py --backend jax [--steps 200] [--epochs 4] [--repeats 3]

Steps/s are taken over epochs 2.. (epoch 1 compiles), best of `--repeats`.
With `--steps` 200 an epoch, batch-level scalars are written every 4 steps
(`training.tensorboard_callback`: about 50 an epoch).
"""

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=None)
    parser.add_argument("--steps", type=int, default=200, help="steps an epoch")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, ROOT)
    from kerastune_lab.backend import use_backend

    backend = use_backend(args.backend)
    import keras
    import numpy as np

    from kerastune_lab.resume import Backup
    from kerastune_lab.training import fit_resumable

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            if epoch:
                self.seconds += time.perf_counter() - self.start

    x = np.random.default_rng(0).random((args.steps * 32, 64)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    results = {}
    for label in ("without", "with"):
        best = 0
        for _ in range(args.repeats):
            model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, "relu"),
                                      keras.layers.Dense(1)])
            model.compile("adam", "mse")
            timer = Timer()
            timer.seconds = 0.0
            with tempfile.TemporaryDirectory() as logs:
                fit_resumable(model, x, args.epochs, Backup(os.path.join(logs, "backup")),
                              y=y, batch_size=32, callbacks=[timer],
                              steps_per_epoch=args.steps, verbose=0,
                              tensorboard=logs if label == "with" else False)
            best = max(best, args.steps * (args.epochs - 1) / timer.seconds)
        results[label] = best
    print(f"backend {backend}: steps/s without TensorBoard {results['without']:.0f}, "
          f"with {results['with']:.0f} ({results['with'] / results['without'] - 1:+.1%}); "
          f"{(1 / results['with'] - 1 / results['without']) * args.steps * 1e3:+.0f} ms "
          f"an epoch of {args.steps} steps")


if __name__ == "__main__":
    main()
