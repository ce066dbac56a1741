"""Cats vs dogs: a KerasHub ResNet fine-tuned in two phases, with augmentation.

Launch:
    kerastune run cats_vs_dogs --smoke                             # tiny preset and data, offline
    kerastune run cats_vs_dogs                                     # resnet_50_imagenet on TFDS cats_vs_dogs
    kerastune run cats_vs_dogs --backend torch data=~/pets epochs=5
    kerastune run cats_vs_dogs head_epochs=3 head_learning_rate=3e-4 learning_rate=1e-5
    kerastune run cats_vs_dogs --backend jax distribute=data               # every device (GPUs, TPU cores)
Then:
    kerastune predict runs/cats_vs_dogs-<time> my_cat.jpg

The random flips, rotations and zooms run where they are cheapest: inside
the training model on a GPU or TPU (`augment.Augmented`: compiled with the
train step), in the tf.data input pipeline on a CPU (beside the step);
`augment_on=model|pipeline` overrides, config.json records it. The images
are decoded once and kept. The saved model is the plain classifier, without
augmentation.

Phase 1 trains only the new 2-class head at `head_learning_rate` with the
backbone frozen; phase 2 unfreezes the backbone (BatchNorm stays in inference
mode) and trains everything at `learning_rate`. Training is backed up at each
epoch end (and every `save_every_steps` steps): the same command resumes an
interrupted run.
"""

import dataclasses
import logging

from kerastune_lab import testing
from kerastune_lab.config import setting
from kerastune_lab.data import augment, images
from kerastune_lab.distribute import batch_shards, make_distribution, replicated_inputs, scope
from kerastune_lab.evaluate import evaluate_classifier, write_report
from kerastune_lab.evaluate.classification import headline
from kerastune_lab.finetune import two_phase
from kerastune_lab.models import load_image_classifier, resolve_preset
from kerastune_lab.predict import predict_dataset
from kerastune_lab.resume import Backup
from kerastune_lab.runs import LABELS, METRICS
from kerastune_lab.training import HistoryWriter

log = logging.getLogger("kerastune_lab")

# The kind of run this recipe makes, recorded in its run folder when it is
# created (`RunDir.kind`): what `kerastune predict`, `chat` and `export` read.
KIND = "image_classifier"


@dataclasses.dataclass
class Config:
    preset: str = "resnet_50_imagenet"  # KerasHub preset name, kaggle:// or hf:// handle, or a preset folder
    data: str = "tfds:cats_vs_dogs"  # "tfds:NAME", or a folder with one subfolder per class
    image_size: int = setting(224, ge=32)  # pixels, square; the size the backbone was trained at
    batch_size: int = setting(32, ge=1)
    val_split: float = setting(0.2, gt=0, lt=1)  # fraction of each class held out for validation
    head_epochs: int = setting(2, ge=0)  # phase 1: new head only, backbone frozen
    head_learning_rate: float = setting(1e-3, gt=0)  # phase 1 Adam learning rate
    epochs: int = setting(3, ge=0)  # phase 2: everything unfrozen
    learning_rate: float = setting(1e-5, gt=0)  # phase 2 Adam learning rate: very low, to keep what the backbone knows
    train_batchnorm: bool = False  # let BatchNorm statistics update in phase 2 (usually worse)
    flip: str = setting("horizontal", choices=("horizontal", "vertical", "horizontal_and_vertical", ""))  # augmentation: the flip axes; "" for none
    rotation: float = setting(0.1, ge=0, le=1)  # augmentation: largest rotation, fraction of a full turn
    zoom: float = setting(0.1, ge=0, lt=1)  # augmentation: largest zoom, fraction of the image size
    augment_on: str = setting("auto", choices=("auto", "model", "pipeline"))  # where augmentation runs: auto is inside the training model on a GPU/TPU, in the tf.data pipeline on a CPU (recorded in config.json)
    precision: str = setting("auto", choices=("auto", "float32", "mixed_bfloat16", "mixed_float16"))  # auto: from the accelerator (bfloat16 on TPUs and Ampere or newer GPUs, float16 with loss scaling on T4, P100, V100, float32 on CPU)
    save_every_steps: int = setting(0, ge=0)  # back up every N steps as well as at epoch ends (0: epoch ends only)
    jit_compile: str = setting("auto", choices=("auto", "true", "false"))  # compile the train step (XLA; torch.compile on torch); auto: Keras' auto on jax/tensorflow, eager on torch (faster there: docs/benchmarks.md)
    distribute: str = setting("none", choices=("none", "data"))  # data: each batch split over every device (JAX only; several hosts: docs/backends-and-gpus.md)
    seed: int = setting(1337, ge=0)


def smoke():
    """Tiny ResNet preset and a generated class-folder dataset, offline."""
    data = testing.cache_dir("data", "cats_vs_dogs")
    if not any(True for _ in __import__("os").scandir(data)):
        testing.make_image_folder(data, ("cat", "dog"), per_class=24, size=40, extras=True)
    if testing.deliberate_extras(data):
        log.info("%s", testing.deliberate_extras(data))
    return {
        "preset": testing.tiny_preset("resnet"),
        "data": data,
        "image_size": 32,
        "batch_size": 16,
        "head_epochs": 2,
        "head_learning_rate": 0.1,  # the tiny random backbone's head: 1e-3 barely moves it
        "epochs": 2,
        "learning_rate": 1e-4,
    }


def main(config, run):
    import keras_hub

    # Preset first: an unknown name, a gated model or no network fails here,
    # before any dataset download.
    preset = resolve_preset(config.preset, keras_hub.models.ImageClassifier)

    # Augmentation (training only), where it is cheapest: in the input
    # pipeline on a CPU, inside the training model on a GPU/TPU (`augment_on`).
    augmentation = augment.Augmentation(config.flip or None, config.rotation, config.zoom)
    where = augment.placement(config.augment_on, run)

    # Data: decoded and resized once, then kept; shuffled, batched (and
    # augmented, in the pipeline) as a function of (seed, epoch), so a
    # resumed run sees the same batches.
    data = images.load_image_data(config.data, config.image_size, config.batch_size,
                                  config.val_split, config.seed,
                                  augment=augmentation if where == "pipeline" else ())
    log.info("data: %d train / %d val images, classes %s", data.num_train, data.num_val,
             data.class_names)
    run.write_json(LABELS, data.class_names)

    # Devices: with distribute=data, every batch is split over every device
    # (of every process); the distribution is set before the model is built.
    distribution = make_distribution(config.distribute)
    batch_shards(distribution, config.batch_size)  # a batch size that splits evenly
    with scope(distribution):
        # Model: the preset's backbone with a new head for our classes.
        model = load_image_classifier(preset, num_classes=len(data.class_names))
        # The model that trains it: the image converter, then `model`; with the
        # augmentation layers in front when they run in the model. `model`
        # itself is saved, without augmentation.
        layers = augmentation.layers(config.seed) if where == "model" else []
        trainer = augment.Augmented(model, layers)

        # Training, in two phases switched with `trainable` flags. `phases`
        # announces each, numbers its epochs and backs it up as it goes (the
        # same command resumes an interrupted run).
        history = HistoryWriter(run)
        phases = two_phase.Phases(
            trainer, data.train_stream, data.val,
            {two_phase.HEAD: config.head_epochs, two_phase.FINETUNE: config.epochs},
            backup=Backup(run, config.save_every_steps), callbacks=[history],
            tensorboard=run.settings.tensorboard)

        # Phase 1: only the new head learns, at a high rate; the backbone is frozen.
        if phases.to_train(two_phase.HEAD):
            model.backbone.trainable = False
            two_phase.compile_classifier(trainer, config.head_learning_rate,
                                         jit_compile=run.settings.jit_compile)
            phases.fit(two_phase.HEAD)

        # Phase 2: everything learns, at a very low rate, to keep what the
        # backbone knows; its BatchNorm layers stay frozen (inference mode).
        if phases.to_train(two_phase.FINETUNE):
            model.backbone.trainable = True
            if not config.train_batchnorm:
                two_phase.freeze_batchnorm(model.backbone)
            two_phase.compile_classifier(trainer, config.learning_rate,  # again: the flags changed
                                         jit_compile=run.settings.jit_compile)
            phases.fit(two_phase.FINETUNE)

        # Evaluation: validation accuracy after each phase; the per-class report,
        # confusion matrix and curves on the validation split (the data has no
        # test split: metrics.json says so under "evaluated_on").
        y_true, probs = predict_dataset(model, data.val)
        metrics = evaluate_classifier(run, y_true, probs, data.class_names, prefix="val")
        metrics.update({f"{phase}_val_accuracy": history.last(phase)["val_accuracy"]
                        for phase in (two_phase.HEAD, two_phase.FINETUNE) if history.last(phase)})
        with replicated_inputs():  # distribute=data: each batch whole on every device
            metrics["val_loss"], metrics["val_accuracy"] = trainer.evaluate(data.val, verbose=0)
        metrics.update(num_train=data.num_train, num_val=data.num_val, skipped=data.skipped)

    # Saving: the model as a KerasHub preset, then the metrics and the report.
    run.save_model(model)
    run.write_json(METRICS, metrics)
    write_report(run, metrics, "Cats vs dogs", notes=[
        f"preset {config.preset}, data {config.data}",
        f"evaluated on the validation split ({data.num_val} images, {config.val_split:.0%} "
        "of each class): the data has no test split"])
    log.info("%s", headline(metrics))
