"""`kerastune export`: a finished run's model in a format others serve.

    export_run("runs/lora_chat-1", "peft", "out/", with_base=True)

| format  | runs                                   | writes |
|---------|----------------------------------------|--------|
| hf      | chat runs (model/), LoRA runs (merged) | a transformers folder (`hf.py`) |
| peft    | LoRA runs                              | a peft adapter folder (`peft.py`) |
| keras   | classification runs                    | model.keras (`serving.py`) |
| serving | classification runs                    | SavedModel or ONNX (`serving.py`) |
| gguf    | chat runs, LoRA runs (merged)          | model.gguf, Ollama Modelfile (`gguf.py`) |
| gguf-lora | LoRA runs (Llama 2, 3)               | adapter.gguf [+ base.gguf] (`gguf.py`) |

The output folder must not exist. Everything is written into a temporary
folder beside it and renamed into place (`runs.atomic_path`), so a failure
leaves nothing half-written; folders get the usual permissions (umask).
"""

import os
import shutil

from kerastune_lab import run_files
from kerastune_lab.errors import KerastuneError
from kerastune_lab.runs import ADAPTER, CHAT, LABELS, MODEL_DIR, atomic_path, normal_path

FORMATS = ("hf", "peft", "keras", "serving", "gguf", "gguf-lora")
_FITS = {"causal_lm": ("hf", "gguf"), "lora": ("hf", "peft", "gguf", "gguf-lora"),
         "classifier": ("keras", "serving")}
_KINDS = {"causal_lm": "a chat run (a causal LM)", "lora": "a LoRA run",
          "classifier": "a classification run"}
# A run's kind (`RunDir.kind`): (its kind here, the KerasHub task class it loads as).
_EXPORTED_AS = {"causal_lm": ("causal_lm", "CausalLM"), "lora": ("lora", "CausalLM"),
                "image_classifier": ("classifier", "ImageClassifier"),
                "text_classifier": ("classifier", "TextClassifier")}


def run_kind(run):
    """("lora" | "causal_lm" | "classifier", task class) of a finished run,
    from the kind it recorded (`RunDir.kind`)."""
    import keras_hub

    if not os.path.isdir(run.model_path) and not os.path.isfile(run.adapter_path):
        raise KerastuneError(f"run dir {run.path!r} has no {MODEL_DIR}/ or {ADAPTER}: "
                             "expected a finished run")
    if run.kind not in _EXPORTED_AS:
        raise KerastuneError(f"run dir {run.path!r}: neither a recorded kind nor its files "
                             "say what it holds: expected a run of a causal LM, a LoRA "
                             "adapter or a classifier")
    kind, task = _EXPORTED_AS[run.kind]
    return kind, getattr(keras_hub.models, task)


def export_run(run_dir, fmt, output, with_base=False, preset=None, quantize=None):
    """Writes the model of the finished run `run_dir` to the new folder `output`.

    Args:
        run_dir: str. A finished run.
        fmt: str. One of "hf", "peft", "keras", "serving", "gguf", "gguf-lora".
        output: str. The folder to write; must not exist.
        with_base: bool. "peft" and "gguf-lora": also write the float base
            (`output/base/`, `output/base.gguf`).
        preset: str or None. LoRA runs: the base preset instead of the one
            the adapter records.
        quantize: str or None. "gguf" (and the base of "gguf-lora"): f32,
            f16 (the default), q8_0 or q4_k_m.

    Returns:
        `output`.
    """
    if fmt not in FORMATS:
        raise KerastuneError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    output = normal_path(output)  # out/ and ~/out as the user means them
    if os.path.exists(output):
        raise KerastuneError(f"output {output!r} already exists: expected a new folder "
                             "(remove it or choose another --output)")
    run = run_files.check_run(run_dir)  # its files, before anything loads
    kind, task_cls = run_kind(run)
    if fmt not in _FITS[kind]:
        raise KerastuneError(f"--format {fmt} does not fit run dir {run.path!r}, "
                             f"{_KINDS[kind]}: expected --format {' or '.join(_FITS[kind])}")
    if with_base and fmt not in ("peft", "gguf-lora"):
        raise KerastuneError("--with-base: expected --format peft or gguf-lora")
    if quantize is not None and fmt != "gguf" and not (fmt == "gguf-lora" and with_base):
        raise KerastuneError(f"--quantize {quantize}: expected --format gguf "
                             "(or gguf-lora --with-base)")
    if fmt.startswith("gguf"):
        from kerastune_lab.export.gguf import check_quantize

        quantize = quantize or "f16"
        check_quantize(quantize)
    if preset is not None and kind != "lora":
        raise KerastuneError(f"--preset {preset!r}: run dir {run.path!r} holds a whole "
                             "model, not a LoRA adapter; leave out --preset")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with atomic_path(output) as tmp:
        os.makedirs(tmp)
        _write(run, kind, task_cls, fmt, tmp, with_base, preset, output, quantize)
    return output


def _write(run, kind, task_cls, fmt, folder, with_base, preset, output, quantize=None):
    from kerastune_lab.export import gguf, hf, peft, serving

    adapter = run.adapter_path
    if fmt == "gguf-lora":
        gguf.save_gguf_lora(adapter, folder, preset, with_base=with_base, quantize=quantize)
        return
    if fmt == "peft":
        peft.save_peft(adapter, folder, with_base=with_base, preset=preset,
                       final_path=output)
        if os.path.isfile(run.chat_path):  # for `kerastune chat --adapter DIR`
            shutil.copy(run.chat_path, os.path.join(folder, CHAT))
        return
    if kind == "lora":
        from kerastune_lab.finetune.lora import merged_model

        model = merged_model(adapter, preset)
    else:
        from kerastune_lab.models import load_run_model

        # Uncompiled: an export is for inference. A compiled model would have
        # a new, unbuilt optimizer for the run's saved optimizer state to be
        # skipped into ("Skipping variable loading for optimizer 'adam' ...
        # 2 variables whereas the saved optimizer has 82"), and model.keras
        # would carry KerasHub's custom compile, which `load_model` cannot
        # replay ("`compile()` was not called as part of model loading").
        model = load_run_model(run, task_cls, compile=False)
    template = None
    if fmt in ("hf", "gguf") and os.path.isfile(run.chat_path):
        from kerastune_lab.generate import chat_template_of

        # The chat template the run trained with.
        template = chat_template_of(model, run_files.chat_settings(run.path))
    if fmt == "gguf":
        gguf.save_gguf(model, folder, template, quantize)
        return
    if fmt == "hf":
        hf.save_transformers(model, folder)
        if template is not None:
            hf.save_chat_template(template, folder)
        return
    if os.path.isfile(run.labels_path):
        shutil.copy(run.labels_path, os.path.join(folder, LABELS))
    if fmt == "keras":
        serving.save_keras(model, folder)
    else:
        serving.save_serving(model, folder)
