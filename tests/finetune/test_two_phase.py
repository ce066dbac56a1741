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
