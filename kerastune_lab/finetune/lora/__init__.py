"""Standard LoRA for KerasHub backbones, and adapter files.

    quantize(causal_lm, "int8")                # optional, before LoRA
    enable_lora(causal_lm, rank=8)             # query and value
    causal_lm.fit(...)                         # trains only lora_a, lora_b
    save_adapter(causal_lm, "run/adapter.lora.h5", preset="llama2_7b_en")
    ...
    load_adapter(fresh_causal_lm, "run/adapter.lora.h5")  # quantizes as recorded
    save_merged_preset("run/adapter.lora.h5", "merged/")  # plain keras_hub preset

One module a job, every public name importable from here
(`from kerastune_lab.finetune import lora; lora.enable_lora(...)`):

    layers.py        the factorisation, the LoRA layers, `enable_lora`, counts
    targets.py       which layers LoRA goes on (names and patterns)
    adapter_file.py  the `.lora.h5` adapter file: save, read, load onto a model
    merge.py         an adapter with its base preset: load on top, or merge in
    peft_folder.py   the factors in peft's folder layout (written for peft, read from it)

What `quantize` also needs (`backbone_of`, `layer_paths`, `abstract_weights`,
`lora_state`) lives in `finetune/_backbone.py`, which imports neither.
"""

from kerastune_lab.finetune._backbone import (
    abstract_weights,
    backbone_of,
    carries_lora,
    has_lora,
    layer_paths,
    lora_state,
)
from kerastune_lab.finetune.lora.adapter_file import (
    ADAPTER_SUFFIX,
    FORMAT,
    FORMAT_VERSION,
    load_adapter,
    read_adapter_factors,
    read_adapter_metadata,
    save_adapter,
)
from kerastune_lab.finetune.lora.checks import MAX_RANK
from kerastune_lab.finetune.lora.layers import (
    Factorisation,
    LoraDense,
    LoraEinsumDense,
    LoraState,
    count_lora_parameters,
    enable_lora,
    parameter_counts,
)
from kerastune_lab.finetune.lora.merge import (
    load_float_base,
    load_with_adapter,
    merge_adapter,
    merged_model,
    save_merged_preset,
)
from kerastune_lab.finetune.lora.peft_folder import (
    is_peft_folder,
    modules_of,
    read_peft_folder,
    write_peft_folder,
)
from kerastune_lab.finetune.lora.targets import (
    ALL_TARGETS,
    ATTENTION_TARGETS,
    DEFAULT_TARGETS,
    target_layers,
)

__all__ = [
    "ADAPTER_SUFFIX",
    "ALL_TARGETS",
    "ATTENTION_TARGETS",
    "DEFAULT_TARGETS",
    "FORMAT",
    "FORMAT_VERSION",
    "Factorisation",
    "LoraDense",
    "LoraEinsumDense",
    "LoraState",
    "MAX_RANK",
    "abstract_weights",
    "backbone_of",
    "carries_lora",
    "count_lora_parameters",
    "enable_lora",
    "has_lora",
    "is_peft_folder",
    "layer_paths",
    "load_adapter",
    "load_float_base",
    "load_with_adapter",
    "lora_state",
    "merge_adapter",
    "merged_model",
    "modules_of",
    "parameter_counts",
    "read_adapter_factors",
    "read_adapter_metadata",
    "read_peft_folder",
    "save_adapter",
    "save_merged_preset",
    "target_layers",
    "write_peft_folder",
]
