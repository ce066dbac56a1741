"""The two phases train what they say: the head alone, then everything."""

import numpy as np

from kerastune_lab import testing
from kerastune_lab.finetune import two_phase
from kerastune_lab.models import load_image_classifier


def _weights(layer):
    import keras

    return [keras.ops.convert_to_numpy(w).copy() for w in layer.weights]


def _changed(before, after):
    return any(not np.allclose(a, b) for a, b in zip(before, after))


def test_head_then_everything():
    import keras

    preset = testing.tiny_preset("resnet")
    model = load_image_classifier(preset, num_classes=2)
    preset_backbone = _weights(model.backbone)
    head = model.get_layer("predictions")
    head_before = _weights(head)

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    y = (x[:, :, :, 0].mean(axis=(1, 2)) > 127).astype("int32")
    seen = []

    class Spy(keras.callbacks.Callback):
        phase = None  # set by fit_resumable, as for a HistoryWriter

        def on_train_end(self, logs=None):
            seen.append((self.phase, _weights(model.backbone), _weights(head)))

    two_phase.fine_tune(model, (x, y), None, head_epochs=2, head_learning_rate=1e-2,
                        epochs=2, learning_rate=1e-3, callbacks=[Spy()], batch_size=8)

    (phase1, backbone1, head1), (phase2, backbone2, head2) = seen
    assert (phase1, phase2) == ("head", "finetune")
    # Phase 1: backbone exactly the preset's (BatchNorm statistics included).
    for a, b in zip(preset_backbone, backbone1):
        np.testing.assert_array_equal(a, b)
    assert _changed(head_before, head1)
    # Phase 2: both move.
    assert _changed(backbone1, backbone2)
    assert _changed(head1, head2)
    # BatchNorm layers stayed in inference mode: their statistics did not move.
    bn = [w for w, v in zip(backbone2, model.backbone.weights) if "moving" in v.path]
    bn_preset = [w for w, v in zip(preset_backbone, model.backbone.weights) if "moving" in v.path]
    assert bn and all(np.array_equal(a, b) for a, b in zip(bn, bn_preset))


def test_train_batchnorm_lets_statistics_move():
    import keras

    model = load_image_classifier(testing.tiny_preset("resnet"), num_classes=2)
    before = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.backbone.weights
              if "moving" in v.path}
    x = np.random.default_rng(1).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = np.array([0, 1] * 4, "int32")
    two_phase.fine_tune(model, (x, y), None, head_epochs=0, head_learning_rate=1e-3, epochs=1,
                        learning_rate=1e-3, train_batchnorm=True, batch_size=8, verbose=0)
    after = {v.path: keras.ops.convert_to_numpy(v) for v in model.backbone.weights
             if "moving" in v.path}
    assert any(not np.allclose(before[k], after[k]) for k in before)


def test_each_phase_is_announced_before_it_starts(capsys):
    import logging

    import keras

    model = load_image_classifier(testing.tiny_preset("resnet"), num_classes=2)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = np.arange(8) % 2
    events = []

    class Lines(logging.Handler):
        def emit(self, record):
            events.append(record.getMessage())

    class Starts(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            events.append("fit")

    logger = logging.getLogger("kerastune_lab")
    handler = Lines()
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        two_phase.fine_tune(model, (x, y), None, head_epochs=2, head_learning_rate=1e-3,
                            epochs=1, learning_rate=1e-5, callbacks=[Starts()], batch_size=8,
                            verbose=0)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [e for e in events if e.startswith("phase")]
    assert [e if e == "fit" else "phase" for e in events] == ["phase", "fit", "phase", "fit"]
    head, finetune = lines
    assert head.startswith("phase 1/2 (head): training the new head only, backbone frozen")
    assert "learning rate 0.001, epochs 1-2 of 3" in head
    assert finetune.startswith("phase 2/2 (finetune): training everything, BatchNorm in "
                               "inference mode")
    assert "learning rate 1e-05, epoch 3 of 3" in finetune
    counts = [int(line.split("(")[2].split(" trainable")[0].replace(",", "")) for line in lines]
    assert 0 < counts[0] < counts[1]

    # No handler set up (a notebook calling the library): printed instead.
    saved, logger.handlers = logger.handlers, []
    try:
        capsys.readouterr()
        two_phase.fine_tune(model, (x, y), None, head_epochs=0, head_learning_rate=1e-3,
                            epochs=1, learning_rate=1e-5, batch_size=8, verbose=0)
    finally:
        logger.handlers = saved
    assert "kerastune: phase 1/1 (finetune): training everything" in capsys.readouterr().out


# --- What reaches `fit` in each phase (issue 30: what was used, not what was
# announced). `training.fit_resumable` is replaced by a spy that records the
# model as fit would see it, so no training runs: fast, and exact.

def _spy_on_fit(monkeypatch):
    import keras

    from kerastune_lab import compat, training

    calls = []

    def spy(model, train, epochs, backup=None, phase="train", first_epoch=0, callbacks=(),
            **kwargs):
        bn = [layer.trainable for layer in compat.sublayers(model.backbone)
              if isinstance(layer, keras.layers.BatchNormalization)]
        others = [w.path for w in model.backbone.weights if not w.trainable]
        calls.append({
            "train": train, "epochs": epochs, "backup": backup, "phase": phase,
            "first_epoch": first_epoch, "callbacks": list(callbacks), "kwargs": kwargs,
            "backbone_trainable": model.backbone.trainable, "batchnorm_trainable": bn,
            "frozen": others, "trainable_count": len(model.trainable_weights),
            "rate": float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
            "optimizer": type(model.optimizer).__name__,
            # What compile was given (`model.loss` may be a task's earlier default).
            "loss": model.get_compile_config()["loss"],
            "metrics": [(m["class_name"], m["config"]["name"])
                        for m in model.get_compile_config()["metrics"]],
            "jit_compile": model.jit_compile,
        })
        return "history of " + phase

    monkeypatch.setattr(training, "fit_resumable", spy)
    return calls


def _batchnorm_weights(model):
    import keras

    from kerastune_lab import compat

    return [w.path for w in model.backbone.weights
            if any(w is v for layer in compat.sublayers(model.backbone)
                   if isinstance(layer, keras.layers.BatchNormalization) for v in layer.weights)]


def _tiny_classifier():
    return load_image_classifier(testing.tiny_preset("resnet"), num_classes=3)


def test_fit_gets_each_phase_its_flags_rate_epochs_and_arguments(monkeypatch):
    import keras

    calls = _spy_on_fit(monkeypatch)
    model = _tiny_classifier()
    x, y = np.zeros((4, 32, 32, 3), "float32"), np.array([0, 1, 2, 0])
    marker = keras.callbacks.Callback()
    histories = two_phase.fine_tune(
        model, (x, y), "VAL", head_epochs=2, head_learning_rate=3e-3, epochs=3,
        learning_rate=2e-5, callbacks=[marker], jit_compile="false",
        class_weight={0: 1.0, 1: 2.0, 2: 4.0})
    assert histories == {"head": "history of head", "finetune": "history of finetune"}
    head, finetune = calls
    for call in calls:
        assert call["train"] is x and call["kwargs"]["y"] is y
        assert call["kwargs"]["validation_data"] == "VAL"
        assert call["kwargs"]["class_weight"] == {0: 1.0, 1: 2.0, 2: 4.0}
        assert call["callbacks"] == [marker] and call["backup"] is None
        assert call["optimizer"] == "Adam" and call["jit_compile"] is False
        assert call["loss"]["class_name"] == "SparseCategoricalCrossentropy"
        assert call["loss"]["config"]["from_logits"] is True
        assert call["loss"]["config"]["ignore_class"] is None
        assert call["metrics"] == [("SparseCategoricalAccuracy", "accuracy")]
    assert (head["phase"], head["first_epoch"], head["epochs"]) == ("head", 0, 2)
    assert (finetune["phase"], finetune["first_epoch"], finetune["epochs"]) == ("finetune", 2, 5)
    np.testing.assert_allclose(head["rate"], 3e-3, rtol=1e-6)
    np.testing.assert_allclose(finetune["rate"], 2e-5, rtol=1e-6)
    # Phase 1: the head alone; phase 2: everything but BatchNorm.
    assert head["backbone_trainable"] is False
    assert head["trainable_count"] == len(model.get_layer("predictions").trainable_weights) > 0
    assert finetune["backbone_trainable"] is True
    assert finetune["batchnorm_trainable"] and not any(finetune["batchnorm_trainable"])
    assert finetune["frozen"] == _batchnorm_weights(model) != []
    assert finetune["trainable_count"] > head["trainable_count"]


def _announced(call):
    """The lines `call()` logs through the toolkit's logger."""
    import logging

    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("kerastune_lab")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        call()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return lines


def test_train_batchnorm_and_a_skipped_phase(monkeypatch):
    calls = _spy_on_fit(monkeypatch)
    model = _tiny_classifier()
    lines = _announced(lambda: two_phase.fine_tune(
        model, "DATA", None, head_epochs=0, head_learning_rate=1e-3, epochs=4,
        learning_rate=1e-4, train_batchnorm=True))
    # BatchNorm trains too: not announced as in inference mode.
    assert [line.split(" (")[1] for line in lines] == ["finetune): training everything"]
    (only,) = calls
    assert (only["phase"], only["first_epoch"], only["epochs"]) == ("finetune", 0, 4)
    assert only["train"] == "DATA" and "y" not in only["kwargs"]
    assert only["kwargs"]["validation_data"] is None
    assert only["batchnorm_trainable"] and all(only["batchnorm_trainable"])
    assert only["frozen"] == [w.path for w in model.backbone.weights if "moving" in w.path]
    calls.clear()
    two_phase.fine_tune(model, "DATA", None, head_epochs=2, head_learning_rate=1e-3, epochs=0,
                        learning_rate=1e-4)
    assert [(c["phase"], c["first_epoch"], c["epochs"]) for c in calls] == [("head", 0, 2)]


class _Resume:
    def __init__(self, past):
        self.past_phases, self.asked = past, []

    def past(self, phase, order):
        self.asked.append((phase, order))
        return phase in self.past_phases


def test_a_run_resumed_in_phase_2_skips_phase_1_and_hands_fit_the_backup(monkeypatch):
    calls = _spy_on_fit(monkeypatch)
    model = _tiny_classifier()
    backup = type("Backup", (), {})()
    backup.resume = _Resume({"head"})
    two_phase.fine_tune(model, "DATA", None, head_epochs=2, head_learning_rate=1e-3, epochs=3,
                        learning_rate=1e-4, backup=backup)
    assert [(c["phase"], c["first_epoch"], c["epochs"], c["backup"]) for c in calls] == [
        ("finetune", 2, 5, backup)]
    assert backup.resume.asked == [("head", ["head", "finetune"]),
                                   ("finetune", ["head", "finetune"])]
    phases = two_phase.Phases(model, "DATA", None, {"head": 1, "finetune": 0}, backup)
    backup.resume = _Resume(set())
    assert phases.to_train("head") is True and phases.to_train("finetune") is False
    assert two_phase.Phases(model, "DATA", None, {"head": 1}).to_train("head") is True


def test_what_a_script_gets_from_the_defaults():
    """`compile_classifier(model, rate)` and `set_backbone_trainable(model,
    True)` as the docstrings show them: jit_compile as "auto" gives it, and
    BatchNorm kept frozen while the rest of the backbone trains."""
    import keras

    from kerastune_lab import compat

    model = _tiny_classifier()
    two_phase.compile_classifier(model, 1e-3, jit_compile="auto")
    auto = model.jit_compile
    two_phase.compile_classifier(model, 1e-3, jit_compile=not auto)
    assert model.jit_compile is (not auto)
    two_phase.compile_classifier(model, 1e-3)
    assert model.jit_compile == auto
    # The recipes' trainer with augmentation in the model: a plain Keras
    # model, with no loss of its own to fall back on (a KerasHub task has).
    from kerastune_lab.data.augment import Augmented

    trainer = Augmented(model, [keras.layers.RandomFlip("horizontal")])
    two_phase.compile_classifier(trainer, 2e-4)
    config = trainer.get_compile_config()
    assert config["loss"]["class_name"] == "SparseCategoricalCrossentropy"
    assert config["loss"]["config"]["from_logits"] is True
    assert config["optimizer"]["class_name"] == "Adam"
    np.testing.assert_allclose(config["optimizer"]["config"]["learning_rate"], 2e-4, rtol=1e-6)
    model.backbone.trainable = False
    two_phase.set_backbone_trainable(model, True)
    layers = compat.sublayers(model.backbone)
    batchnorm = [layer.trainable for layer in layers
                 if isinstance(layer, keras.layers.BatchNormalization)]
    assert model.backbone.trainable is True and batchnorm and not any(batchnorm)
    assert all(layer.trainable for layer in layers
               if not isinstance(layer, keras.layers.BatchNormalization))
