"""A LoRA run's adapter as a peft adapter folder, the base beside it if asked.

    save_peft("runs/lora_chat-1/adapter.lora.h5", "out/", with_base=True)

`adapter_config.json` and `adapter_model.safetensors` in the key layout peft
writes (`finetune/lora/peft_folder.py`), loaded by
`PeftModel.from_pretrained(base, "out/")`; vLLM, TGI and SGLang serve such
adapters on top of the Hugging Face base. `with_base` also writes the
unmerged float base as a transformers folder in `out/base/`, for a base
with no Hugging Face name (a local or tiny preset).
"""

import os

from kerastune_lab.errors import KerastuneError
from kerastune_lab.export.hf import hf_name, save_transformers
from kerastune_lab.finetune.lora import (
    load_float_base,
    modules_of,
    read_adapter_factors,
    write_peft_folder,
)

BASE_DIR = "base"


def save_peft(adapter, folder, with_base=False, preset=None, final_path=None):
    """Writes the adapter file `adapter` into `folder` in peft's layout.

    Args:
        adapter: str. A `.lora.h5` file written by `save_adapter`.
        folder: str. An existing, empty folder.
        with_base: bool. Also write the float base as a transformers folder
            in `folder/base/`.
        preset: str or None. The base preset, instead of the one the
            adapter records.
        final_path: str or None. Where `folder` ends up (it may be a
            temporary name): with `with_base` and no Hugging Face name,
            `base_model_name_or_path` is `final_path/base`.
    """
    metadata, factors = read_adapter_factors(adapter)
    backbone_class = metadata["base"]["class_name"]
    modules_of(backbone_class, f"peft export of {os.fspath(adapter)!r}")
    preset = preset or metadata["base"]["preset"]
    name = hf_name(preset)
    if with_base:
        base, _ = load_float_base(adapter, preset)
        save_transformers(base, os.path.join(folder, BASE_DIR))
        if name is None:
            name = os.path.abspath(os.path.join(final_path or folder, BASE_DIR))
    elif name is None:
        raise KerastuneError(f"base preset {preset!r} of {os.fspath(adapter)!r} has no known "
                             "Hugging Face name: pass --with-base to write the base beside "
                             "the adapter")
    write_peft_folder(folder, backbone_class, factors, metadata["rank"], metadata["alpha"],
                      base_name=name)
    return folder
