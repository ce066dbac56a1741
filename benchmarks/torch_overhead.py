"""Keras on torch beside plain torch, at shapes where per-op dispatch
dominates, in one process: steps/s side by side, with what a recipe can
choose per backend.

    python benchmarks/torch_overhead.py [--rows gpt2 resnet18 distilbert lora] [--steps 20]
    python benchmarks/torch_overhead.py --compile    # also jit_compile=True (torch.compile)
    python benchmarks/torch_overhead.py --compile --rows gpt2 distilbert lora --width 16
                                                     # the tiny presets' width (smoke size)

| row | ours (KerasHub task, `model.fit`, torch backend) | baseline (plain torch loop) |
|---|---|---|
| gpt2 | GPT2CausalLM, 2 layers, width 128, seq 64, batch 4 | transformers GPT2LMHeadModel, same config |
| resnet18 | ImageClassifier(ResNetBackbone 18), 64x64, batch 4 | hand-written ResNet-18 (torchvision is not installed here) |
| distilbert | DistilBertTextClassifier, 2 layers, width 128, seq 64, batch 4 | transformers DistilBertForSequenceClassification, same config |
| lora | LlamaCausalLM, 2 layers, width 128, int8 base + our LoRA (rank 8) | ours eager (peft is not installed here) |

Variants of ours: `dropout=0` (Keras' MultiHeadAttention then calls the
fused `ops.dot_product_attention`, torch's SDPA; with dropout it computes
attention by einsum and softmax), `data_format` channels_first or
channels_last, and with `--compile` `jit_compile=True` (torch.compile; its
first epoch compiles). Steps/s: median of `--repeats` epochs after one
warm-up epoch; "first epoch s": the warm-up epoch's seconds (with
`jit_compile` its compilation). `--width` sets the width of the gpt2,
distilbert and lora rows (16: the tiny presets of the tests). Random
weights and data; CPU threads as torch sets them.
"""  # noqa: E501  (a markdown table row above: not broken)

import argparse
import os
import statistics
import sys
import time

os.environ["KERAS_BACKEND"] = "torch"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPT2 = dict(vocabulary_size=5000, num_layers=2, num_heads=2, hidden_dim=128,
            intermediate_dim=512, max_sequence_length=64)
SEQ, GPT2_BATCH, IMAGE, IMAGE_BATCH, CLASSES = 64, 4, 64, 4, 10
LORA_RANK = 8


def keras_rate(model, x, y, batch, steps, repeats):
    import keras

    class Timer(keras.callbacks.Callback):
        async_safe = True
        seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    timer = Timer()
    timer.seconds = []
    model.fit(x, y, batch_size=batch, epochs=1 + repeats, steps_per_epoch=steps,
              callbacks=[timer], verbose=0)
    return steps / statistics.median(timer.seconds[1:]), timer.seconds[0]


def torch_rate(model, loss_of, batches, steps, repeats):
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    seconds = []
    for _ in range(1 + repeats):
        start = time.perf_counter()
        for i in range(steps):
            loss = loss_of(model, batches[i % len(batches)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - start)
    return steps / statistics.median(seconds[1:]), seconds[0]


def gpt2_rows(args):
    import keras
    import keras_hub
    import numpy as np
    import torch
    import transformers

    GPT2.update(hidden_dim=args.width, intermediate_dim=4 * args.width)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, GPT2["vocabulary_size"], (GPT2_BATCH * args.steps, SEQ + 1))
    x = {"token_ids": ids[:, :-1].astype("int32"), "padding_mask": np.ones((len(ids), SEQ), bool)}
    y = ids[:, 1:].astype("int32")
    rows = []
    variants = [("dropout 0.1", 0.1, False), ("dropout 0 (fused attention)", 0.0, False)]
    if args.compile:
        variants.append(("dropout 0, jit_compile", 0.0, True))
    for name, dropout, jit in variants:
        keras.utils.set_random_seed(0)
        backbone = keras_hub.models.GPT2Backbone(**GPT2, dropout=dropout)
        model = keras_hub.models.GPT2CausalLM(backbone, preprocessor=None)
        model.compile(keras.optimizers.AdamW(1e-4),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=jit)
        rows.append((f"gpt2, ours: {name}", *keras_rate(model, x, y, GPT2_BATCH, args.steps,
                                                        args.repeats)))
    config = transformers.GPT2Config(vocab_size=GPT2["vocabulary_size"], n_positions=SEQ,
                                     n_embd=GPT2["hidden_dim"], n_layer=GPT2["num_layers"],
                                     n_head=GPT2["num_heads"], n_inner=GPT2["intermediate_dim"])
    hf = transformers.GPT2LMHeadModel(config)
    batches = [torch.as_tensor(ids[i:i + GPT2_BATCH, :-1]) for i in range(0, 8 * GPT2_BATCH,
                                                                            GPT2_BATCH)]
    rate = torch_rate(hf, lambda m, b: m(input_ids=b, labels=b).loss, batches, args.steps,
                      args.repeats)
    return rows, ("gpt2, transformers (sdpa, dropout 0.1)", *rate)


def resnet18_torch():
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + self.skip(x))

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
              nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, CLASSES)]
    return nn.Sequential(*layers)


def resnet18_rows(args):
    import keras
    import keras_hub
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    n = IMAGE_BATCH * args.steps
    images = rng.random((n, IMAGE, IMAGE, 3), dtype=np.float32)
    labels = rng.integers(0, CLASSES, n).astype("int32")
    rows = []
    variants = [("channels_last", "channels_last", False),
                ("channels_first", "channels_first", False)]
    if args.compile:
        variants.append(("channels_last, jit_compile", "channels_last", True))
    for name, data_format, jit in variants:
        keras.utils.set_random_seed(0)
        backbone = keras_hub.models.ResNetBackbone(
            input_conv_filters=[64], input_conv_kernel_sizes=[7],
            stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[2, 2, 2, 2],
            stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
            image_shape=(IMAGE, IMAGE, 3) if data_format == "channels_last" else (3, IMAGE, IMAGE),
            data_format=data_format)
        model = keras_hub.models.ImageClassifier(backbone, num_classes=CLASSES,
                                                 preprocessor=None)
        model.compile(keras.optimizers.AdamW(1e-4),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=jit)
        x = images if data_format == "channels_last" else images.transpose(0, 3, 1, 2).copy()
        rows.append((f"resnet18, ours: {name}", *keras_rate(model, x, labels, IMAGE_BATCH,
                                                            args.steps, args.repeats)))
    net = resnet18_torch()
    loss = torch.nn.CrossEntropyLoss()
    batches = [(torch.as_tensor(images[i:i + IMAGE_BATCH].transpose(0, 3, 1, 2).copy()),
                torch.as_tensor(labels[i:i + IMAGE_BATCH]).long())
               for i in range(0, 8 * IMAGE_BATCH, IMAGE_BATCH)]
    rate = torch_rate(net, lambda m, b: loss(m(b[0]), b[1]), batches, args.steps, args.repeats)
    return rows, ("resnet18, plain torch (NCHW)", *rate)


def compiled_variants(args):
    return [("eager", False)] + ([("jit_compile", True)] if args.compile else [])


def distilbert_rows(args):
    import keras
    import keras_hub
    import numpy as np
    import torch
    import transformers

    width, vocabulary = args.width, 5000
    rng = np.random.default_rng(0)
    n = GPT2_BATCH * args.steps
    ids = rng.integers(0, vocabulary, (n, SEQ)).astype("int32")
    x = {"token_ids": ids, "padding_mask": np.ones(ids.shape, bool)}
    labels = rng.integers(0, 2, n).astype("int32")
    rows = []
    for name, jit in compiled_variants(args):
        keras.utils.set_random_seed(0)
        backbone = keras_hub.models.DistilBertBackbone(
            vocabulary_size=vocabulary, num_layers=2, num_heads=2, hidden_dim=width,
            intermediate_dim=4 * width, max_sequence_length=SEQ)
        model = keras_hub.models.DistilBertTextClassifier(backbone, num_classes=2,
                                                          preprocessor=None)
        model.compile(keras.optimizers.Adam(1e-4),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=jit)
        rows.append((f"distilbert, ours: {name}", *keras_rate(model, x, labels, GPT2_BATCH,
                                                              args.steps, args.repeats)))
    config = transformers.DistilBertConfig(vocab_size=vocabulary, n_layers=2, n_heads=2,
                                           dim=width, hidden_dim=4 * width,
                                           max_position_embeddings=SEQ, num_labels=2)
    hf = transformers.DistilBertForSequenceClassification(config)
    batches = [(torch.as_tensor(ids[i:i + GPT2_BATCH]).long(),
                torch.as_tensor(labels[i:i + GPT2_BATCH]).long())
               for i in range(0, 8 * GPT2_BATCH, GPT2_BATCH)]
    rate = torch_rate(hf, lambda m, b: m(input_ids=b[0], labels=b[1]).loss, batches,
                      args.steps, args.repeats)
    return rows, ("distilbert, transformers", *rate)


def lora_rows(args):
    import keras
    import keras_hub
    import numpy as np

    from kerastune_lab.finetune import lora

    width, vocabulary = args.width, 5000
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocabulary, (GPT2_BATCH * args.steps, SEQ + 1))
    x = {"token_ids": ids[:, :-1].astype("int32"), "padding_mask": np.ones((len(ids), SEQ), bool)}
    y = ids[:, 1:].astype("int32")
    rows = []
    for mode in args.quantize:
        for name, jit in compiled_variants(args):
            keras.utils.set_random_seed(0)
            backbone = keras_hub.models.LlamaBackbone(
                vocabulary_size=vocabulary, num_layers=2, num_query_heads=4,
                num_key_value_heads=2, hidden_dim=width, intermediate_dim=4 * width)
            model = keras_hub.models.LlamaCausalLM(backbone, preprocessor=None)
            model.quantize(mode)
            lora.enable_lora(model, LORA_RANK, 2.0 * LORA_RANK)
            model.compile(keras.optimizers.AdamW(1e-4),
                          keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          jit_compile=jit)
            rows.append((f"lora llama, {mode} base: {name}",
                         *keras_rate(model, x, y, GPT2_BATCH, args.steps, args.repeats)))
    return rows[1:], rows[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=tuple(ROWS),
                        default=["gpt2", "resnet18", "distilbert", "lora"])
    parser.add_argument("--steps", type=int, default=10, help="steps per epoch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also jit_compile=True")
    parser.add_argument("--width", type=int, default=128,
                        help="width of the gpt2, distilbert and lora rows")
    parser.add_argument("--quantize", nargs="+", choices=("int8", "int4"), default=["int8"],
                        help="the lora row's base")
    args = parser.parse_args()
    sys.path.insert(0, ROOT)
    import keras
    import torch

    print(f"keras {keras.__version__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.steps} steps/epoch, width {args.width}\n")
    print("| row | steps/s | / baseline | first epoch s |")
    print("|---|---|---|---|")
    for row in args.rows:
        ours, (base_name, base, first) = ROWS[row](args)
        print(f"| {base_name} | {base:.2f} | 1.00 | {first:.1f} |")
        for name, rate, first in ours:
            print(f"| {name} | {rate:.2f} | {rate / base:.2f} | {first:.1f} |", flush=True)


ROWS = {"gpt2": gpt2_rows, "resnet18": resnet18_rows, "distilbert": distilbert_rows,
        "lora": lora_rows}


if __name__ == "__main__":
    main()
