"""Run directories as the recipes leave them, made small and fast: a tiny
model trained a few steps (so every LoRA B is non-zero), saved the way the
recipes save it."""

import json
import os

import numpy as np

from kerastune_lab import testing
from kerastune_lab.finetune import lora
from kerastune_lab.finetune.quantize import quantize

TEXT = "the movie was great and the dog liked coffee"
# LoRA on four kinds of projection (attention and feedforward).
TARGETS = ("query", "value", "attention_output", "feedforward_intermediate_dense")


def token_ids(seed=0, batch=2, length=12):
    return np.random.default_rng(seed).integers(4, 100, (batch, length)).astype("int32")


def logits(model, ids):
    """Logits of a KerasHub causal LM on `ids` (its preprocessor left out)."""
    import keras

    saved, model.preprocessor = model.preprocessor, None
    try:
        out = model({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    finally:
        model.preprocessor = saved
    return keras.ops.convert_to_numpy(out)


def _train(model, steps=3):
    """A few Adam steps on random token ids (next-token loss), preprocessor
    left out: enough that every LoRA B moves off zero."""
    import keras

    ids = np.random.default_rng(9).integers(4, 100, (2 * steps, 13)).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones_like(ids[:, :-1])}
    saved, model.preprocessor = model.preprocessor, None
    try:
        model.compile(optimizer=keras.optimizers.Adam(1e-2),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=keras.config.backend() == "jax")
        model.fit(x, ids[:, 1:], batch_size=2, epochs=1, verbose=0)
    finally:
        model.preprocessor = saved


def _new_run(path, config=None):
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"config": config or {}}, f)
    return path


# The chat runs' templates: GPT-2's spells its end token; Llama's has it as
# {eos} (its text, `</s>`, is not in the template).
TEMPLATES = {"gpt2": "<|user|>{prompt}<|endoftext|><|assistant|>{response}<|endoftext|>",
             "llama": "[user] {prompt}{eos}[assistant] {response}{eos}"}


def chat_run(path, kind):
    """A chat run (the sarcastic_chat recipe): the whole model in model/,
    its template in chat.json."""
    import keras_hub

    model = keras_hub.models.CausalLM.from_preset(testing.tiny_preset(kind))
    _train(model)
    _new_run(path)
    model.save_to_preset(os.path.join(path, "model"))
    with open(os.path.join(path, "chat.json"), "w") as f:
        json.dump({"template": TEMPLATES[kind], "add_start_token": True}, f)
    return path


def lora_run(path, targets=TARGETS, mode="int8"):
    """A LoRA run (recipes/lora_chat.py): an adapter over an int8 base."""
    import keras_hub

    preset = testing.tiny_preset("llama")
    model = keras_hub.models.CausalLM.from_preset(preset)
    quantize(model, mode)
    lora.enable_lora(model, rank=2, alpha=4.0, targets=targets)
    _train(model)
    _new_run(path, {"dtype": "float32"})
    lora.save_adapter(model, os.path.join(path, "adapter.lora.h5"), preset=preset)
    with open(os.path.join(path, "chat.json"), "w") as f:
        json.dump({"template": "<|user|>{prompt}{eos}<|assistant|>{response}{eos}",
                   "add_start_token": True}, f)
    return path


def image_run(path):
    """An image classification run (recipes/cats_vs_dogs.py)."""
    import keras
    import keras_hub

    model = keras_hub.models.ImageClassifier.from_preset(testing.tiny_preset("resnet"),
                                                         num_classes=2)
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=keras.config.backend() == "jax")
    model.fit(images, np.array([0, 1, 0, 1]), batch_size=2, verbose=0)
    _new_run(path, {"image_size": 32})
    model.save_to_preset(os.path.join(path, "model"))
    with open(os.path.join(path, "labels.json"), "w") as f:
        json.dump(["cat", "dog"], f)
    return path


def text_run(path):
    """A text classification run (recipes/imdb_sentiment.py), untrained head."""
    import keras_hub

    model = keras_hub.models.TextClassifier.from_preset(testing.tiny_preset("distilbert"),
                                                        num_classes=2)
    _new_run(path, {"sequence_length": 64})
    model.save_to_preset(os.path.join(path, "model"))
    with open(os.path.join(path, "labels.json"), "w") as f:
        json.dump(["NEGATIVE", "POSITIVE"], f)
    return path
