"""Two-phase fine-tuning: train a new head on a frozen backbone, then all of it.

    phase 1 "head":      backbone.trainable = False, learning rate ~1e-3
    phase 2 "finetune":  backbone.trainable = True,  learning rate ~1e-5

As in the Keras transfer-learning guide, BatchNormalization layers stay in
inference mode in both phases (a frozen BatchNorm layer runs in inference
mode in Keras 3): updating their statistics on a small dataset at a tiny
learning rate destroys what the backbone learned. `train_batchnorm=True`
unfreezes them in phase 2.

Each phase is announced on one line before it starts (what trains, the
learning rate, its epochs): on the console, in the run's log.txt, and in a
notebook (`console.announce`).

With a `resume.Backup`, a run resumed in phase 2 skips phase 1 (the backup
holds its result), and each phase starts where the backup left off.
"""

import keras

from kerastune_lab import compat

HEAD, FINETUNE = "head", "finetune"


def set_backbone_trainable(model, trainable, train_batchnorm=False):
    """Freezes or unfreezes `model.backbone` (BatchNorm frozen unless asked)."""
    model.backbone.trainable = trainable
    if trainable and not train_batchnorm:
        for layer in compat.sublayers(model.backbone):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def compile_classifier(model, learning_rate, jit_compile="auto"):
    """Compiles for integer labels on logits with Adam at `learning_rate`.

    Args:
        model: a Keras model that outputs logits.
        learning_rate: float.
        jit_compile: "auto", "true", "false" or a bool, as
            `training.choose_jit_compile` (a recipe passes
            `run.settings.jit_compile`). Defaults to "auto": per backend.
    """
    from kerastune_lab.training import choose_jit_compile

    metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=metrics,
        jit_compile=choose_jit_compile(jit_compile),
    )


def _announce(model, number, phases, name, what, learning_rate, first, last, total):
    """One line before a phase: what trains, at what learning rate, which epochs."""
    import numpy as np

    from kerastune_lab.console import announce

    params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    epochs = f"epoch {last}" if last == first + 1 else f"epochs {first + 1}-{last}"
    announce("phase %d/%d (%s): training %s (%s trainable parameters), learning rate %g, "
             "%s of %d", number, phases, name, what, f"{params:,}", learning_rate, epochs, total)


def fine_tune(model, train, val, head_epochs, head_learning_rate, epochs,
              learning_rate, callbacks=(), train_batchnorm=False, backup=None,
              jit_compile="auto", **fit_kwargs):
    """Runs both phases and returns {phase: keras History}.

    Args:
        model: a KerasHub task with a `backbone`, or a model that trains
            one (`data.augment.Augmented`, augmentation in the model).
        train: a `data.stream.Stream` (resumable mid-epoch), a dataset for
            `model.fit`, or an `(x, y)` tuple of arrays.
        val: validation data (dataset or `(x, y)`), or None.
        head_epochs: int. Phase 1 epochs (0 skips it).
        head_learning_rate: float. Phase 1 learning rate.
        epochs: int. Phase 2 epochs (0 skips it).
        learning_rate: float. Phase 2 learning rate.
        callbacks: list of Keras callbacks for both phases (a
            `training.HistoryWriter` among them records each row's phase).
        train_batchnorm: bool. Let BatchNorm statistics update in phase 2.
        backup: a `resume.Backup`, or None: each phase starts where it left
            off (mid-epoch needs a Stream).
        jit_compile: for both compiles (`compile_classifier`).
        **fit_kwargs: passed to both `fit_resumable` calls (e.g.
            `class_weight`, `tensorboard`).
    """
    from kerastune_lab.training import fit_resumable

    if isinstance(train, tuple):
        fit_kwargs["y"] = train[1]
        train = train[0]
    histories = {}
    phases = int(bool(head_epochs)) + int(bool(epochs))
    if head_epochs and not (backup and backup.resumed_phase == FINETUNE):
        set_backbone_trainable(model, False)
        compile_classifier(model, head_learning_rate, jit_compile)
        _announce(model, 1, phases, HEAD, "the new head only, backbone frozen",
                  head_learning_rate, 0, head_epochs, head_epochs + epochs)
        histories[HEAD] = fit_resumable(model, train, head_epochs, backup, HEAD,
                                        callbacks=callbacks, validation_data=val,
                                        **fit_kwargs)
    if epochs:
        set_backbone_trainable(model, True, train_batchnorm)
        compile_classifier(model, learning_rate, jit_compile)  # recompile: trainable flags changed
        _announce(model, phases, phases, FINETUNE,
                  "everything" + ("" if train_batchnorm else ", BatchNorm in inference mode"),
                  learning_rate, head_epochs, head_epochs + epochs, head_epochs + epochs)
        histories[FINETUNE] = fit_resumable(model, train, head_epochs + epochs, backup,
                                            FINETUNE, first_epoch=head_epochs,
                                            callbacks=callbacks, validation_data=val,
                                            **fit_kwargs)
    return histories

