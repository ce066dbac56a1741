"""Chest X-ray pneumonia: a KerasHub ResNet fine-tuned in two phases on
imbalanced classes, evaluated past accuracy.

Launch:
    kerastune run xray_pneumonia --smoke                             # tiny preset and data, offline
    kerastune run xray_pneumonia data=~/chest_xray                   # resnet_50_imagenet on the Kaggle set
    kerastune run xray_pneumonia data=~/chest_xray class_weight=none oversample=true
    kerastune run xray_pneumonia data=~/chest_xray "class_weight={'NORMAL': 3.0, 'PNEUMONIA': 1.0}"
    kerastune run xray_pneumonia data=~/chest_xray target_recall=0.98 --backend torch
Then:
    kerastune evaluate runs/xray_pneumonia-<time> --data ~/other_hospital/test
    kerastune predict runs/xray_pneumonia-<time> person1_virus_6.jpeg

Data: `data` holds the Kaggle "Chest X-Ray Images (Pneumonia)" layout,
`{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`. Its `val/` holds 16 images, too
few to validate on, so a stratified `val_split` of `train/` is used instead
(logged, and written to config.json under "validation").

Augmentation (small rotations, zoom, contrast; no flip by default) runs
where it is cheapest: inside the training model on a GPU or TPU
(`augment.Augmented`), in the tf.data input pipeline on a CPU
(`augment_on=model|pipeline` overrides; config.json records it). The saved
model is the plain classifier, without it.

Imbalance (about 1 NORMAL to 3 PNEUMONIA in train): the loss weighs each
class by n / (classes * n_class) with `class_weight=balanced`; or give the
weights, or `oversample=true` to repeat NORMAL images instead. The weights
used go to config.json.

Evaluation on `test/`: per-class precision, recall and F1, the confusion
matrix, ROC and precision-recall curves, and the decision threshold on
P(PNEUMONIA) that finds `target_recall` of the pneumonia cases, with the
precision it costs: a missed pneumonia costs more than a false alarm.
Everything is put together in report.md.
"""

import dataclasses
import logging
import os

from kerastune_lab import testing
from kerastune_lab.config import setting
from kerastune_lab.data import augment, xray
from kerastune_lab.errors import KerastuneError
from kerastune_lab.evaluate import choose_threshold, evaluate_classifier, write_report
from kerastune_lab.evaluate.classification import headline
from kerastune_lab.finetune import class_weights, two_phase
from kerastune_lab.models import load_image_classifier, resolve_preset
from kerastune_lab.predict import predict_dataset
from kerastune_lab.resume import Backup
from kerastune_lab.runs import CONFIG, LABELS, METRICS
from kerastune_lab.training import HistoryWriter

log = logging.getLogger("kerastune_lab")

# The kind of run this recipe makes, recorded in its run folder when it is
# created (`RunDir.kind`): what `kerastune predict`, `chat` and `export` read.
KIND = "image_classifier"


@dataclasses.dataclass
class Config:
    preset: str = "resnet_50_imagenet"  # KerasHub preset name, kaggle:// or hf:// handle, or a preset folder
    data: str = "chest_xray"  # folder with {train,val,test}/{NORMAL,PNEUMONIA}/ (Kaggle layout)
    image_size: int = setting(224, ge=32)  # pixels, square; the size the backbone was trained at
    batch_size: int = setting(32, ge=1)
    min_val_images: int = setting(100, ge=0)  # a val/ with fewer images is not used; a val_split of train is carved instead
    val_split: float = setting(0.1, gt=0, lt=1)  # fraction of each class of train/ carved out for validation, when needed
    class_weight: str | dict = setting("balanced", choices=("balanced", "none"))  # "balanced" (from label counts), "none", or {"NORMAL": 3.0, "PNEUMONIA": 1.0}
    oversample: bool = False  # repeat rare-class training images until classes are even ("balanced" weights then ~1)
    head_epochs: int = setting(2, ge=0)  # phase 1: new head only, backbone frozen
    head_learning_rate: float = setting(1e-3, gt=0)  # phase 1 Adam learning rate
    epochs: int = setting(3, ge=0)  # phase 2: everything unfrozen
    learning_rate: float = setting(1e-5, gt=0)  # phase 2 Adam learning rate: very low, to keep what the backbone knows
    train_batchnorm: bool = False  # let BatchNorm statistics update in phase 2 (usually worse)
    flip: str = setting("", choices=("horizontal", "vertical", "horizontal_and_vertical", ""))  # augmentation: "" (none: anatomy is not symmetric), "horizontal", "vertical"
    rotation: float = setting(0.03, ge=0, le=1)  # augmentation: largest rotation, fraction of a full turn (0.03 = ~11 degrees)
    zoom: float = setting(0.1, ge=0, lt=1)  # augmentation: largest zoom, fraction of the image size
    contrast: float = setting(0.1, ge=0, le=1)  # augmentation: largest contrast change, fraction (exposure varies between films)
    positive_class: str = "PNEUMONIA"  # the class of the ROC/PR curves and of the threshold
    target_recall: float = setting(0.95, gt=0, le=1)  # recall of positive_class to choose a decision threshold for
    augment_on: str = setting("auto", choices=("auto", "model", "pipeline"))  # where augmentation runs: auto is inside the training model on a GPU/TPU, in the tf.data pipeline on a CPU (recorded in config.json)
    precision: str = setting("auto", choices=("auto", "float32", "mixed_bfloat16", "mixed_float16"))  # auto: from the accelerator (bfloat16 on TPUs and Ampere or newer GPUs, float16 with loss scaling on T4, P100, V100, float32 on CPU)
    save_every_steps: int = setting(0, ge=0)  # back up every N steps as well as at epoch ends (0: epoch ends only)
    jit_compile: str = setting("auto", choices=("auto", "true", "false"))  # compile the train step (XLA; torch.compile on torch); auto: Keras' auto on jax/tensorflow, eager on torch (faster there: docs/benchmarks.md)
    seed: int = setting(1337, ge=0)


def smoke():
    """Tiny ResNet preset and a generated chest_xray tree (imbalanced, tiny
    val/, mixed grayscale / RGB / 16-bit files), offline."""
    data = testing.cache_dir("data", "chest_xray")
    if not os.path.isdir(os.path.join(data, "test")):
        testing.make_chest_xray(data, size=40)
    return {
        "preset": testing.tiny_preset("resnet"),
        "data": data,
        "image_size": 32,
        "batch_size": 40,
        "val_split": 0.2,
        "head_epochs": 10,
        "head_learning_rate": 0.1,  # a tiny random backbone's features vary little: a big step
        "epochs": 1,
        "learning_rate": 1e-4,
    }


def main(config, run):
    import keras_hub

    # Preset first: an unknown name, a gated model or no network fails here,
    # before the images are read.
    preset = resolve_preset(config.preset, keras_hub.models.ImageClassifier)

    # Augmentation (training only), where it is cheapest: in the input
    # pipeline on a CPU, inside the training model on a GPU/TPU (`augment_on`).
    augmentation = augment.Augmentation(config.flip or None, config.rotation, config.zoom,
                                        config.contrast)
    where = augment.placement(config.augment_on, run)

    # Data: train/val/test decoded to 3 channels (grayscale too), resized, kept.
    data = xray.load_split_tree(
        config.data, config.image_size, config.batch_size, min_val_images=config.min_val_images,
        val_split=config.val_split, oversample=config.oversample, seed=config.seed,
        augment=augmentation if where == "pipeline" else ())
    log.info("data: images per class %s; training on %d", data.counts, data.num_train)
    run.write_json(LABELS, data.class_names)
    if config.positive_class not in data.class_names:
        raise KerastuneError(f"positive_class={config.positive_class!r}: expected one of "
                             f"{', '.join(data.class_names)}")

    # Imbalance: class weights from the labels fit will see.
    weights = class_weights.class_weights(data.train_labels, config.class_weight,
                                          data.class_names)
    log.info("class weights: %s", class_weights.by_name(weights, data.class_names))
    run.update_json(CONFIG, validation=data.validation, counts=data.counts,
                    class_weights=class_weights.by_name(weights, data.class_names),
                    oversampled_train=data.num_train if config.oversample else None)

    # Model: the preset's backbone with a new head for our classes.
    model = load_image_classifier(preset, num_classes=len(data.class_names))
    # The model that trains it: the image converter, then `model`; with the
    # augmentation layers in front when they run in the model. `model`
    # itself is saved, without augmentation.
    layers = augmentation.layers(config.seed) if where == "model" else []
    trainer = augment.Augmented(model, layers)

    # Training, in two phases switched with `trainable` flags. `phases`
    # announces each, numbers its epochs and backs it up as it goes (the
    # same command resumes an interrupted run), the loss class-weighted.
    history = HistoryWriter(run)
    phases = two_phase.Phases(
        trainer, data.train_stream, data.val,
        {two_phase.HEAD: config.head_epochs, two_phase.FINETUNE: config.epochs},
        backup=Backup(run, config.save_every_steps), callbacks=[history], class_weight=weights,
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

    # The decision threshold for the recall a screening test needs, chosen on
    # the validation split; the test split then measures it (choosing it on
    # test/ and reporting it there would flatter it).
    y_val, probs_val = predict_dataset(model, data.val)
    threshold = choose_threshold(y_val, probs_val, data.class_names, config.positive_class,
                                 config.target_recall, split="val")

    # Evaluation: on test/, past accuracy, at that threshold.
    y_true, probs = predict_dataset(model, data.test)
    metrics = evaluate_classifier(run, y_true, probs, data.class_names,
                                  positive_class=config.positive_class,
                                  target_recall=config.target_recall, prefix="test",
                                  threshold=threshold)
    metrics.update({f"{phase}_val_accuracy": history.last(phase)["val_accuracy"]
                    for phase in (two_phase.HEAD, two_phase.FINETUNE) if history.last(phase)})
    metrics["val_loss"], metrics["val_accuracy"] = trainer.evaluate(data.val, verbose=0)
    metrics.update(counts=data.counts, skipped=data.skipped)

    # Saving: the model as a KerasHub preset, then the metrics and the report.
    run.save_model(model)
    run.write_json(METRICS, metrics)
    write_report(run, metrics, "Chest X-ray pneumonia", notes=[
        f"preset {config.preset}, data {config.data}",
        f"evaluated on the test split, {config.data}/test",
        f"validation: {data.validation.get('reason', 'the val/ split')}",
        f"class weights: {class_weights.by_name(weights, data.class_names)}"
        + (", training data oversampled" if config.oversample else ""),
    ])
    log.info("%s", headline(metrics))
