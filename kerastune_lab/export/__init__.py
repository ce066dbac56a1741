"""A tuned model, taken out to where it is served.

    kerastune export RUN_DIR --format hf|peft|keras|serving --output DIR [--with-base]

    run.py      which format fits which run; the output written atomically
    hf.py       a causal LM as a transformers folder (KerasHub's exporter;
                Llama 2 through its Llama 3 weight map)
    peft.py     a LoRA run's adapter as a peft adapter folder (+ the base)
    serving.py  a classifier as model.keras, or Keras' `model.export`
"""

from kerastune_lab.export.hf import HF_NAMES, hf_name, save_transformers
from kerastune_lab.export.peft import save_peft
from kerastune_lab.export.run import FORMATS, export_run, run_kind
from kerastune_lab.export.serving import save_keras, save_serving, serving_model

__all__ = [
    "FORMATS",
    "HF_NAMES",
    "export_run",
    "hf_name",
    "run_kind",
    "save_keras",
    "save_peft",
    "save_serving",
    "save_transformers",
    "serving_model",
]
