"""A KerasHub causal LM as a Hugging Face transformers folder.

    save_transformers(causal_lm, "out/")   # config.json, model.safetensors, tokenizer
    hf_name("llama2_7b_en")                # "meta-llama/Llama-2-7b-hf"

KerasHub writes the folder itself (`CausalLM.export_to_transformers`) for
the backbones in its table (GPT-2, Llama 3, Mistral, Gemma, Qwen in
keras-hub 0.32). Llama 2 (`LlamaBackbone`) is not in that table, although
transformers loads Llama 2 and Llama 3 with the same `LlamaForCausalLM` and
`Llama3Backbone` is a `LlamaBackbone` with the same layers: it goes through
KerasHub's own writer with KerasHub's Llama 3 weight map, and a config that
differs only in the context length (4096) and a linear RoPE scaling where
the backbone has one. What is written here is the Llama 2 tokenizer
(SentencePiece: `tokenizer.model` and its `tokenizer_config.json`).
"""

import json
import os
import shutil

from kerastune_lab import compat
from kerastune_lab.errors import KerastuneError

# KerasHub preset name -> the Hugging Face model it was converted from, for
# `base_model_name_or_path` of a peft adapter.
HF_NAMES = {
    "llama2_7b_en": "meta-llama/Llama-2-7b-hf",
    "llama2_instruct_7b_en": "meta-llama/Llama-2-7b-chat-hf",
    "llama3_8b_en": "meta-llama/Meta-Llama-3-8B",
    "llama3_instruct_8b_en": "meta-llama/Meta-Llama-3-8B-Instruct",
    "llama3.1_8b": "meta-llama/Llama-3.1-8B",
    "llama3.2_1b": "meta-llama/Llama-3.2-1B",
    "llama3.2_3b": "meta-llama/Llama-3.2-3B",
    "gpt2_base_en": "openai-community/gpt2",
    "gpt2_medium_en": "openai-community/gpt2-medium",
    "gpt2_large_en": "openai-community/gpt2-large",
    "gpt2_extra_large_en": "openai-community/gpt2-xl",
}
LLAMA2_CONTEXT = 4096  # max_position_embeddings of Llama 2


def hf_name(preset):
    """The Hugging Face name of a KerasHub preset (name or hf:// handle), or None."""
    if not preset:
        return None
    preset = str(preset)
    if preset.startswith("hf://"):
        return preset[len("hf://"):]
    return HF_NAMES.get(preset)


def save_transformers(causal_lm, folder):
    """Writes `causal_lm` (a float KerasHub CausalLM, no LoRA) as a
    transformers folder that `AutoModelForCausalLM.from_pretrained` and
    `AutoTokenizer.from_pretrained` load.

    Args:
        causal_lm: keras_hub.models.CausalLM, with its preprocessor.
        folder: str. Written into (created if missing).
    """
    from kerastune_lab.finetune._backbone import has_lora
    from kerastune_lab.finetune.quantize import quantization_mode

    backbone = causal_lm.backbone
    name = type(backbone).__name__
    if has_lora(backbone) or quantization_mode(backbone) != "none":
        raise KerastuneError(f"transformers export of a {name}: expected a plain float model "
                             "(LoRA merged, not quantized)")
    exportable = compat.hf_exportable_backbones()
    if name == "LlamaBackbone":
        _save_llama2(causal_lm, folder)
    elif name in exportable:
        causal_lm.export_to_transformers(folder)
    else:
        known = sorted(exportable | {"LlamaBackbone"})
        raise KerastuneError(f"a {name} cannot be exported to transformers: expected one "
                             f"of {', '.join(known)}")
    return folder


def save_chat_template(template, folder):
    """Writes a `ChatTemplate` as the folder's `chat_template` (Jinja, in
    tokenizer_config.json), so that transformers' `apply_chat_template` and
    `pipeline("text-generation")` on role/content messages render the text
    the model was tuned on."""
    path = os.path.join(folder, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config["chat_template"] = template.jinja()
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


def llama2_config(backbone):
    """The transformers config of a Llama 2 backbone (KerasHub's Llama 3
    config, Llama 2's context length and linear RoPE scaling)."""
    config = compat.hf_config(backbone, like="Llama3Backbone")
    config["max_position_embeddings"] = LLAMA2_CONTEXT
    factor = backbone.rope_position_scaling_factor
    if factor != 1.0:
        if "rope_scaling" in config:
            raise KerastuneError("a LlamaBackbone with both rope_position_scaling_factor "
                                 "and rope_frequency_adjustment_factor: expected one")
        config["rope_scaling"] = {"rope_type": "linear", "factor": factor}
    return config


def _save_llama2(causal_lm, folder):
    preprocessor = causal_lm.preprocessor
    tokenizer = preprocessor.tokenizer if preprocessor is not None else None
    # KerasHub's writer with its Llama 3 weight map, and the Llama 2 config.
    compat.hf_export_backbone(causal_lm.backbone, folder, like="Llama3Backbone",
                              config=llama2_config, tokenizer=tokenizer)
    if tokenizer is not None:
        _save_llama2_tokenizer(tokenizer, folder)


def _save_llama2_tokenizer(tokenizer, folder):
    """SentencePiece model and config, as meta-llama/Llama-2-7b-hf has them."""
    assets = os.path.join(folder, ".assets")
    os.makedirs(assets)
    tokenizer.save_assets(assets)
    shutil.move(os.path.join(assets, "vocabulary.spm"), os.path.join(folder, "tokenizer.model"))
    shutil.rmtree(assets)
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": tokenizer.start_token,
              "eos_token": tokenizer.end_token, "unk_token": "<unk>", "pad_token": None,
              "add_bos_token": True, "add_eos_token": False, "legacy": False,
              "clean_up_tokenization_spaces": False, "model_max_length": LLAMA2_CONTEXT}
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
