"""Two-phase fine-tuning: train a new head on a frozen backbone, then all of it.

    phase 1 "head":      backbone.trainable = False, learning rate ~1e-3
    phase 2 "finetune":  backbone.trainable = True,  learning rate ~1e-5

As in the Keras transfer-learning guide, BatchNormalization layers stay in
inference mode in both phases (a frozen BatchNorm layer runs in inference
mode in Keras 3): updating their statistics on a small dataset at a tiny
learning rate destroys what the backbone learned. `train_batchnorm=True`
unfreezes them in phase 2.

The image recipes spell each phase out (the `trainable` flags, the
compile at the phase's learning rate, the fit) and leave the bookkeeping to
`Phases`: each phase is announced on one line before it starts (what trains
and the learning rate, read from the model's flags and its optimizer, and
its epochs: on the console, in the run's log.txt, and in a notebook,
`console.announce`), its epochs are numbered after the phases before it,
and it is fitted from where the backup left off. `fine_tune` runs both
phases in one call, for a script.

With a `resume.Backup`, a run resumed in phase 2 skips phase 1 (the backup
holds its result), and each phase starts where the backup left off.
"""

import keras

from kerastune_lab import compat

HEAD, FINETUNE = "head", "finetune"


def freeze_batchnorm(backbone):
    """Freezes every BatchNormalization layer of `backbone`: a frozen
    BatchNorm layer runs in inference mode in Keras 3, so its statistics
    stay the pretrained ones while the rest of the backbone trains."""
    for layer in compat.sublayers(backbone):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def set_backbone_trainable(model, trainable, train_batchnorm=False):
    """Freezes or unfreezes `model.backbone` (BatchNorm frozen unless asked)."""
    model.backbone.trainable = trainable
    if trainable and not train_batchnorm:
        freeze_batchnorm(model.backbone)


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


def _what_trains(model):
    """What the trainable flags of `model.backbone` say trains, in words."""
    backbone = model.backbone
    if not backbone.trainable:
        return "the new head only, backbone frozen"
    frozen = any(isinstance(layer, keras.layers.BatchNormalization) and not layer.trainable
                 for layer in compat.sublayers(backbone))
    return "everything" + (", BatchNorm in inference mode" if frozen else "")


def _announce(model, number, phases, name, first, last, total):
    """One line before a phase: what trains (from the trainable flags), at
    the learning rate its optimizer holds, which epochs."""
    import numpy as np

    from kerastune_lab.console import announce

    params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    epochs = f"epoch {last}" if last == first + 1 else f"epochs {first + 1}-{last}"
    announce("phase %d/%d (%s): training %s (%s trainable parameters), learning rate %g, "
             "%s of %d", number, phases, name, _what_trains(model), f"{params:,}", rate,
             epochs, total)


class Phases:
    """The bookkeeping around the phases of a fine-tune, so that a recipe
    shows the phases themselves: the `trainable` flags, the compile, the fit.

        phases = two_phase.Phases(trainer, data.train_stream, data.val,
                                  {two_phase.HEAD: 2, two_phase.FINETUNE: 3}, backup=backup)
        if phases.to_train(two_phase.HEAD):
            model.backbone.trainable = False
            two_phase.compile_classifier(trainer, 1e-3)
            phases.fit(two_phase.HEAD)
        if phases.to_train(two_phase.FINETUNE):
            model.backbone.trainable = True
            two_phase.freeze_batchnorm(model.backbone)
            two_phase.compile_classifier(trainer, 1e-5)   # again: the flags changed
            phases.fit(two_phase.FINETUNE)

    `fit(phase)` announces the phase (what trains and the learning rate, read
    from the model and its optimizer), numbers its epochs after the phases
    before it, and fits it from where the backup left off
    (`training.fit_resumable`).

    Args:
        model: the compiled model to train (a KerasHub task, or a model that
            trains one: `data.augment.Augmented`).
        train: a `data.stream.Stream` (resumable mid-epoch), a dataset for
            `model.fit`, or an `(x, y)` tuple of arrays.
        val: validation data (dataset or `(x, y)`), or None.
        epochs: dict {phase: epochs}, in the order the phases run.
        backup: a `resume.Backup`, or None.
        callbacks: list of Keras callbacks for every phase (a
            `training.HistoryWriter` among them records each row's phase).
        **fit_kwargs: for every `fit_resumable` (`class_weight`, `tensorboard`, ...).
    """

    def __init__(self, model, train, val, epochs, backup=None, callbacks=(), **fit_kwargs):
        if isinstance(train, tuple):
            fit_kwargs["y"] = train[1]
            train = train[0]
        self.model, self.train, self.val = model, train, val
        self.epochs = dict(epochs)
        self.backup = backup
        self.callbacks = list(callbacks)
        self.fit_kwargs = fit_kwargs
        self.histories = {}  # {phase: keras History}

    def to_train(self, phase):
        """Whether `phase` has epochs and the run is not past it (a run
        resumed in a later phase has its result in the backup)."""
        if self.backup is not None and self.backup.resume.past(phase, list(self.epochs)):
            return False
        return self.epochs[phase] > 0

    def fit(self, phase):
        """Announces `phase` and fits it; returns its Keras History."""
        from kerastune_lab.training import fit_resumable

        order = list(self.epochs)
        first = sum(self.epochs[p] for p in order[:order.index(phase)])
        last = first + self.epochs[phase]
        counted = [p for p in order if self.epochs[p]]
        _announce(self.model, counted.index(phase) + 1, len(counted), phase, first, last,
                  sum(self.epochs.values()))
        self.histories[phase] = fit_resumable(
            self.model, self.train, last, self.backup, phase, first_epoch=first,
            callbacks=self.callbacks, validation_data=self.val, **self.fit_kwargs)
        return self.histories[phase]


def fine_tune(model, train, val, head_epochs, head_learning_rate, epochs,
              learning_rate, callbacks=(), train_batchnorm=False, backup=None,
              jit_compile="auto", **fit_kwargs):
    """Runs both phases (as the image recipes spell them out with `Phases`)
    and returns {phase: keras History}.

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
    phases = Phases(model, train, val, {HEAD: head_epochs, FINETUNE: epochs}, backup,
                    callbacks, **fit_kwargs)
    if phases.to_train(HEAD):
        set_backbone_trainable(model, False)
        compile_classifier(model, head_learning_rate, jit_compile)
        phases.fit(HEAD)
    if phases.to_train(FINETUNE):
        set_backbone_trainable(model, True, train_batchnorm)
        compile_classifier(model, learning_rate, jit_compile)  # recompile: trainable flags changed
        phases.fit(FINETUNE)
    return phases.histories
