"""Tiny presets and data for tests and `--smoke`, built offline.

Real presets and datasets download at run time; this machine-independent
module builds stand-ins that travel the same road: tiny KerasHub models
built from config, with tokenizer vocabularies generated here, saved with
`save_to_preset` and loaded back by the recipes through `from_preset(dir)`;
and small datasets written on disk in the real layouts.

    path = tiny_preset("resnet")            # cached under KERASTUNE_CACHE
    model = keras_hub.models.ImageClassifier.from_preset(path, num_classes=2)
"""

import errno
import io
import os

import numpy as np

from kerastune_lab.hub.handles import CONFIG_FILE as PRESET_CONFIG
from kerastune_lab.runs import atomic_path

PRESET_KINDS = ("resnet", "distilbert", "gpt2", "llama")
PRESET_REVISIONS = {"llama": "-r2"}  # r2: byte-fallback SentencePiece

# Real English words, for vocabularies and generated text.
WORDS = """
the a an and or but if then so because of to in on at by for with from about
as into over after before under between is are was were be been am do does
did have has had will would can could should may might must not no yes very
too also just only even still again never always often sometimes here there
now today tomorrow yesterday what why how when where who which this that
these those it its i me my you your we our they their he she him her good
bad great terrible awful wonderful brilliant boring dull amazing perfect poor
best worst love hate like enjoy loved hated liked enjoyed movie film story
plot actor actors acting scene scenes music ending director script character
characters time year people man woman world life day night house car dog
cat sun rain coffee work meeting email phone computer weather monday
weekend friend party food dinner idea plan problem answer question thing
really sure oh wow well fine right nice thanks please sorry hello
""".split()

CHAT_MARKERS = ("<|user|>", "<|assistant|>")


def cache_dir(*parts):
    """Returns (and makes) `$KERASTUNE_CACHE/...` (default ~/.cache/kerastune_lab).

    A folder that cannot be made or written (an unwritable HOME) is one line,
    exit code 1 (`errors.NotWritable`), naming KERASTUNE_CACHE to move it.
    """
    from kerastune_lab.errors import NotWritable

    root = os.environ.get("KERASTUNE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "kerastune_lab")
    path = os.path.join(root, *parts)
    where = ("KERASTUNE_CACHE" if os.environ.get("KERASTUNE_CACHE")
             else f"HOME={os.path.expanduser('~')!r}")
    try:
        os.makedirs(path, exist_ok=True)
        why = None if os.access(path, os.W_OK | os.X_OK) else os.strerror(errno.EACCES)
    except OSError as e:
        why = e.strerror or str(e)
    if why:
        raise NotWritable(f"cache folder {path!r} cannot be written ({why}; it is under "
                          f"{where}): set KERASTUNE_CACHE to a writable folder")
    return path


def sentences(n, seed=0, length=(6, 14)):
    """Returns `n` random sentences of real words."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(*length))) for _ in range(n)]


def wordpiece_vocabulary():
    """A WordPiece vocabulary (BERT special tokens, then whole words)."""
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + [
        c for c in ".,!?'-0123456789"]


def byte_pair_vocabulary(vocab_size=400):
    """A GPT-2 style byte-level BPE (vocabulary dict, merges list), trained on
    generated sentences with Hugging Face `tokenizers`."""
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(sentences(400), vocab_size=vocab_size, min_frequency=2,
                            special_tokens=["<|endoftext|>", *CHAT_MARKERS], show_progress=False)
    model = __import__("json").loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return model["vocab"], merges


def sentencepiece_proto(vocab_size=400):
    """A Llama-2 style SentencePiece model (bytes), trained on generated
    sentences: BPE with byte fallback (the 256 pieces <0x00>..<0xFF>, as
    Llama 2 has them), so any text tokenizes, in KerasHub and in llama.cpp
    (whose SentencePiece tokenizer needs the byte pieces for text outside
    the vocabulary)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences(400)), model_writer=buf, vocab_size=vocab_size,
        model_type="bpe", pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece="<pad>",
        unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>", byte_fallback=True,
        user_defined_symbols=list(CHAT_MARKERS), minloglevel=2,
    )
    return buf.getvalue()


def build_tiny_task(kind, seed=0):
    """Builds a tiny KerasHub task model of `kind` (one of PRESET_KINDS)."""
    import keras
    import keras_hub
    from keras_hub import models

    keras.utils.set_random_seed(seed)
    if kind == "resnet":
        backbone = models.ResNetBackbone(
            input_conv_filters=[64], input_conv_kernel_sizes=[3],
            stackwise_num_filters=[64], stackwise_num_blocks=[1], stackwise_num_strides=[1],
            block_type="basic_block", image_shape=(None, None, 3))
        converter = keras_hub.layers.ResNetImageConverter(
            image_size=(32, 32), scale=1 / 255.0)
        preprocessor = models.ResNetImageClassifierPreprocessor(image_converter=converter)
        # Saved with a 10-class head, as a real preset has its ImageNet head.
        return models.ResNetImageClassifier(backbone=backbone, num_classes=10,
                                            preprocessor=preprocessor)
    if kind == "distilbert":
        tokenizer = models.DistilBertTokenizer(vocabulary=wordpiece_vocabulary())
        backbone = models.DistilBertBackbone(
            vocabulary_size=tokenizer.vocabulary_size(), num_layers=2, num_heads=2,
            hidden_dim=16, intermediate_dim=32, max_sequence_length=128)
        preprocessor = models.DistilBertTextClassifierPreprocessor(tokenizer, sequence_length=64)
        return models.DistilBertTextClassifier(backbone=backbone, num_classes=2,
                                               preprocessor=preprocessor)
    if kind == "gpt2":
        vocabulary, merges = byte_pair_vocabulary()
        tokenizer = models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)
        backbone = models.GPT2Backbone(
            vocabulary_size=tokenizer.vocabulary_size(), num_layers=2, num_heads=2,
            hidden_dim=16, intermediate_dim=32, max_sequence_length=256)
        preprocessor = models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=64)
        return models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor)
    if kind == "llama":
        tokenizer = models.LlamaTokenizer(proto=sentencepiece_proto())
        backbone = models.LlamaBackbone(
            vocabulary_size=tokenizer.vocabulary_size(), num_layers=2, num_query_heads=4,
            num_key_value_heads=2, hidden_dim=16, intermediate_dim=32)
        preprocessor = models.LlamaCausalLMPreprocessor(tokenizer, sequence_length=64)
        return models.LlamaCausalLM(backbone=backbone, preprocessor=preprocessor)
    raise ValueError(f"unknown tiny preset kind {kind!r}: expected one of {PRESET_KINDS}")


def save_tiny_preset(kind, path, seed=0):
    """Builds a tiny `kind` task and saves it as a preset folder at `path`."""
    task = build_tiny_task(kind, seed)
    with atomic_path(path) as tmp:
        task.save_to_preset(tmp)
    return path


def tiny_preset(kind):
    """Returns the folder of a cached tiny preset of `kind`, building it once."""
    # A preset whose builder changed gets a new folder (the cache outlives a checkout).
    path = os.path.join(cache_dir("presets"), f"tiny_{kind}{PRESET_REVISIONS.get(kind, '')}")
    if not os.path.exists(os.path.join(path, PRESET_CONFIG)):
        save_tiny_preset(kind, path)
    return path


def make_image_folder(root, class_names=("cat", "dog"), per_class=16, size=40,
                      seed=0, mode="RGB", ext=".jpg", extras=False):
    """Writes `root/<class>/*.jpg` with classes a model can tell apart.

    Class k is drawn around its own colour (RGB) or brightness (grayscale),
    with noise, and a bright square in a class-dependent corner.

    Args:
        extras: bool. Also write one non-image file and one corrupt image
            into the first class, for the loader's skip path.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, name in enumerate(class_names):
        folder = os.path.join(root, name)
        os.makedirs(folder, exist_ok=True)
        base = np.zeros(3)
        base[k % 3] = 170
        for i in range(per_class):
            pixels = rng.normal(60, 25, (size, size, 3)) + base
            q = size // 3
            r0, c0 = (0, 0) if k % 2 == 0 else (size - q, size - q)
            pixels[r0:r0 + q, c0:c0 + q] = 250
            pixels = np.clip(pixels, 0, 255).astype("uint8")
            image = Image.fromarray(pixels, "RGB")
            if mode != "RGB":
                image = image.convert(mode)
            image.save(os.path.join(folder, f"{name}_{i:04d}{ext}"))
    if extras:
        first = os.path.join(root, class_names[0])
        with open(os.path.join(first, "notes.txt"), "w") as f:
            f.write("not an image\n")
        with open(os.path.join(first, "broken.jpg"), "wb") as f:
            f.write(rng.bytes(300))
    return root


def deliberate_extras(root):
    """The line that says the broken files of `make_image_folder(extras=True)`
    in `root` are there on purpose, or None where there are none.

    `--smoke` logs it before the loader reports what it skipped, so the
    loader's "skipped 2 file(s)" reads as the check it is, not as a fault.
    """
    found = []
    for dirpath, _, filenames in os.walk(root):
        found += [os.path.join(os.path.basename(dirpath), n) for n in filenames
                  if n in ("notes.txt", "broken.jpg")]
    if not found:
        return None
    return (f"smoke data: {' and '.join(sorted(found))} in {root} are broken on purpose "
            "(a corrupt image, a non-image file): the loader skips them, as it would in a "
            "real folder")


def xray_image(pneumonia, rng, size=48):
    """Returns a chest-X-ray-like grayscale image, float (size, size) in 0-255.

    Two dark lung fields in a brighter body; an opacity whitens the lungs,
    more strongly (on average) in pneumonia. The two classes overlap, so a
    classifier trained on imbalanced data leans towards the majority class.

    Args:
        pneumonia: bool. Draw the PNEUMONIA class rather than NORMAL.
        rng: numpy Generator.
        size: int. Pixels, square; a multiple of 8. Defaults to 48.
    """
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = 10 + 20 * yy
    body = ((xx - 0.5) / 0.47) ** 2 + ((yy - 0.55) / 0.52) ** 2 < 1
    image = np.where(body, 90.0, image)
    lungs = np.zeros((size, size), bool)
    for cx in (0.29, 0.71):
        lungs |= ((xx - cx) / 0.2) ** 2 + ((yy - 0.5) / 0.38) ** 2 < 1
    image = np.where(lungs, 20.0, image)
    amp = rng.uniform(70, 200) if pneumonia else rng.uniform(0, 100)
    haze = rng.uniform(0.5, 1.0, (size // 8, size // 8)).repeat(8, 0).repeat(8, 1)
    image = image + amp * haze[:size, :size] * lungs
    image = image + rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255)


XRAY_CLASSES = ("NORMAL", "PNEUMONIA")
# (NORMAL, PNEUMONIA) images per split: imbalanced like the real set (about
# 1:3 in train), with a `val` split far too small to validate on (16 there).
XRAY_COUNTS = {"train": (24, 72), "val": (2, 2), "test": (16, 24)}


def _save_xray(image, path_stem, kind):
    """Writes `image` as kind 0: 8-bit gray JPEG, 1: RGB JPEG, 2: 16-bit gray
    PNG, 3: 16-bit RGB PNG. Returns the path."""
    from PIL import Image

    if kind == 0:
        path = path_stem + ".jpeg"
        Image.fromarray(image.astype("uint8"), "L").save(path)
    elif kind == 1:
        path = path_stem + ".jpeg"
        Image.fromarray(image.astype("uint8"), "L").convert("RGB").save(path)
    elif kind == 2:
        path = path_stem + ".png"
        Image.fromarray((image * 257).astype("uint16")).save(path)
    else:
        # Pillow writes no 16-bit RGB PNG; TensorFlow's encoder does.
        import tensorflow as tf

        path = path_stem + ".png"
        deep = np.repeat((image * 257).astype("uint16")[..., None], 3, axis=-1)
        with open(path, "wb") as f:
            f.write(tf.io.encode_png(deep).numpy())
    return path


def make_chest_xray(root, counts=None, size=48, seed=0, kinds=(0, 1, 2, 3)):
    """Writes the Kaggle "Chest X-Ray Images (Pneumonia)" layout,
    `root/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg|png`, with images of
    `xray_image`: a mix of 8-bit grayscale and RGB JPEGs and 16-bit grayscale
    and RGB PNGs.

    Args:
        counts: dict {split: (normal, pneumonia)}. Images per class; a split
            left out is not written. Defaults to `XRAY_COUNTS`.
        size: int. Pixels, square. Defaults to 48.
        kinds: tuple of int. File kinds to cycle through (see `_save_xray`).
    """
    rng = np.random.default_rng(seed)
    counts = XRAY_COUNTS if counts is None else counts
    for split, per_class in counts.items():
        for label, (name, n) in enumerate(zip(XRAY_CLASSES, per_class)):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                stem = os.path.join(folder, f"{name.lower()}-{split}-{i:04d}")
                _save_xray(xray_image(bool(label), rng, size), stem, kinds[i % len(kinds)])
    return root


# Sentiment words of WORDS, for generated reviews whose label follows meaning.
POSITIVE_WORDS = ("good", "great", "wonderful", "brilliant", "amazing", "perfect", "best",
                  "love", "loved", "enjoyed", "liked", "nice")
NEGATIVE_WORDS = ("bad", "terrible", "awful", "boring", "dull", "poor", "worst", "hate",
                  "hated")


def neutral_words():
    """WORDS without sentiment words or negations."""
    skip = set(POSITIVE_WORDS + NEGATIVE_WORDS) | {
        "not", "no", "never", "like", "enjoy", "fine", "sorry", "thanks", "well", "wow",
        "right", "problem", "please", "sure"}
    return [w for w in WORDS if w not in skip]


def reviews(n, seed=0, positive=POSITIVE_WORDS, negative=NEGATIVE_WORDS, length=(4, 10)):
    """Returns (texts, labels): `n` short reviews, label 1 when positive.

    Each review is neutral filler with one or two sentiment words of its
    class, so the label depends on what the words mean.
    """
    rng = np.random.default_rng(seed)
    filler = neutral_words()
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = list(rng.choice(filler, rng.integers(*length)))
        for w in rng.choice(positive if label else negative, rng.integers(1, 3)):
            words.insert(rng.integers(0, len(words) + 1), str(w))
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def make_review_file(path, n=120, seed=0, text_column="review", label_column="sentiment",
                     class_names=("negative", "positive"), empty=0):
    """Writes generated reviews as CSV (the Kaggle "IMDB Dataset.csv" layout:
    review,sentiment with negative/positive) or, for a .jsonl path, JSON lines.

    Args:
        empty: int. How many rows with an empty text to add (dropped on load).
    """
    import csv
    import json

    texts, labels = reviews(n, seed)
    rows = [{text_column: t, label_column: class_names[y]} for t, y in zip(texts, labels)]
    for i in range(empty):
        rows.insert(3 * i + 1, {text_column: " ", label_column: class_names[0]})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        if str(path).endswith(".jsonl"):
            f.writelines(json.dumps(row) + "\n" for row in rows)
        else:
            writer = csv.DictWriter(f, fieldnames=[text_column, label_column])
            writer.writeheader()
            writer.writerows(rows)
    return path
