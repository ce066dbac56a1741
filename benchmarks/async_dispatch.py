"""Whether the backup callback keeps Keras' asynchronous batch callbacks, and
what the per-step loss check costs: steps/s side by side, in one run.

    python benchmarks/async_dispatch.py [--backend jax] [--steps 300] [--repeats 3]

The same small MLP, trained with `model.fit` on the same arrays, four ways:

| way | callbacks |
|---|---|
| none | none (Keras dispatches batch callbacks asynchronously where it can) |
| backup | `resume.Backup(save_every_steps=0)` (loss checked in Keras' callback thread) |
| backup, sync | the same with `async_safe = False`: the host reads each step's loss |
| sync probe | a callback that only reads the loss each step (the host waits each step) |

Each row prints steps/s (median of `--repeats` epochs after one warm-up
epoch) and whether Keras dispatched batch callbacks asynchronously
(`CallbackList._async_train`, set in keras/src/callbacks/callback_list.py
from every callback's `async_safe` and overridden batch hooks). On a CPU the
device is the host, so the gap is small; on a GPU it is the time the host
waits for each step.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="jax")
    parser.add_argument("--steps", type=int, default=300, help="steps per epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = args.backend
    sys.path.insert(0, ROOT)
    import keras
    import numpy as np
    from keras.src.callbacks.callback_list import CallbackList

    from kerastune_lab.resume import Backup

    class SyncBackup(Backup):
        async_safe = False

    class SyncProbe(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])

    batch = 32
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.steps * batch, 64)).astype("float32")
    y = rng.integers(0, 10, args.steps * batch).astype("int32")

    def model():
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((64,)),
                              keras.layers.Dense(args.width, activation="relu"),
                              keras.layers.Dense(args.width, activation="relu"),
                              keras.layers.Dense(10)])
        m.compile("adam", "sparse_categorical_crossentropy")
        return m

    class Timer(keras.callbacks.Callback):
        async_safe = True

        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    with tempfile.TemporaryDirectory() as tmp:
        ways = {"none": lambda: [], "backup": lambda: [Backup(os.path.join(tmp, "a"))],
                "backup, sync": lambda: [SyncBackup(os.path.join(tmp, "b"))],
                "sync probe": lambda: [SyncProbe()]}
        print(f"backend {keras.backend.backend()}, keras {keras.__version__}, "
              f"{args.steps} steps/epoch, batch {batch}, MLP width {args.width}\n")
        print("| way | steps/s | Keras async batch callbacks |")
        print("|---|---|---|")
        for name, make in ways.items():
            m, timer, extra = model(), Timer(), make()
            asynchronous = CallbackList(extra + [timer], model=m)._async_train
            m.fit(x, y, batch_size=batch, epochs=1 + args.repeats, shuffle=False,
                  callbacks=extra + [timer], verbose=0)
            rate = args.steps / statistics.median(timer.seconds[1:])
            print(f"| {name} | {rate:.0f} | {'on' if asynchronous else 'off'} |", flush=True)


if __name__ == "__main__":
    main()
