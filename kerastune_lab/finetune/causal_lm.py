"""Tuning a KerasHub causal LM on packed token windows: what the two chat
recipes (full fine-tuning and LoRA) share.

    compile_causal_lm(model, learning_rate, weight_decay, jit_compile="auto")
    fit_packed(model, train, heldout, batch_size, epochs, seed, backup, callbacks,
               tensorboard)

The loss is averaged over the weighted tokens only (`sample_weight` from
`data.packing.model_inputs`: the assistant's replies with the chat loss
mask), and the model trains on token ids with its preprocessor detached.
"""

import keras

from kerastune_lab.data.packing import sequence_dataset, sequence_stream
from kerastune_lab.models import detached_preprocessor
from kerastune_lab.training import choose_jit_compile, fit_resumable


def compile_causal_lm(model, learning_rate, weight_decay=0.0, jit_compile="auto"):
    """Compiles for next-token ids with AdamW, the loss and accuracy averaged
    over the tokens whose sample weight is not 0.

    Args:
        model: a KerasHub `CausalLM`.
        learning_rate: float.
        weight_decay: float. AdamW's.
        jit_compile: "auto", "true", "false" or a bool, as
            `training.choose_jit_compile` (a recipe passes
            `run.settings.jit_compile`). Defaults to "auto": per backend.
    """
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay),
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=choose_jit_compile(jit_compile),
    )


def fit_packed(model, train, heldout, batch_size, epochs, seed=0, backup=None, callbacks=(),
               tensorboard=None):
    """Trains `model` on packed windows, from where `backup` left off.

    Args:
        model: a compiled KerasHub `CausalLM`.
        train: `data.packing.Packed`. Shuffled per (seed, epoch), resumable
            mid-epoch.
        heldout: `data.packing.Packed` or None. The validation data.
        batch_size: int. Windows a step.
        epochs: int.
        seed: int.
        backup: a `resume.Backup`, or None.
        callbacks: list of Keras callbacks.
        tensorboard: str or None. A folder for TensorBoard logs (a recipe
            passes `run.settings.tensorboard`), None for none.

    Returns:
        The Keras `History`.
    """
    stream = sequence_stream(train, batch_size, seed=seed)
    validation = sequence_dataset(heldout, batch_size) if heldout is not None else None
    with detached_preprocessor(model):
        return fit_resumable(model, stream, epochs, backup, callbacks=callbacks,
                             validation_data=validation, tensorboard=tensorboard,
                             whole_batches=True)  # windows filled: `distribute.fill_windows`
