"""LoRA chat: a Llama tuned on prompt/response pairs through a standard LoRA
adapter over an int8 base; the run keeps the adapter (a few MB), not the base.

Launch:
    kerastune run lora_chat --smoke                                # tiny Llama and data, offline
    kerastune run lora_chat                                        # llama2_7b_en, int8 base, rank 8 on q/v
    kerastune run lora_chat preset=llama3.2_1b quantize=none precision=float32
    kerastune run lora_chat lora_rank=16 lora_alpha=32 lora_targets=all
    kerastune run lora_chat lora_targets=query,key,value,attention_output quantize=int4
    kerastune run lora_chat --backend jax distribute=data                   # every device
    kerastune run lora_chat --backend jax distribute=model model_parallel=2
    kerastune run lora_chat --backend jax distribute=data --coordinator HOST:PORT --num-processes 2 --process-id 0   # several hosts (docs/backends-and-gpus.md)
    kerastune run lora_chat sequence_length=1024 remat=activations
    kerastune run lora_chat preset=gpt2_base_en quantize=none
Then:
    kerastune chat runs/lora_chat-<time>                           # base + adapter, quantized as trained
    kerastune chat --preset llama2_7b_en --adapter runs/lora_chat-<time>/adapter.lora.h5
    kerastune merge runs/lora_chat-<time> --output llama2_sarcastic/   # a plain KerasHub preset

Copied from the sarcastic_chat recipe (data, template, loss mask, packing,
perplexity, generations) and changed where LoRA differs:
- the base is quantized (`quantize`: int8 weight-only by default, int4, or
  none) *while it loads* (`kerastune_lab.finetune.quantize.load_quantized`):
  the model is built with int8 weights and each layer's float weights are
  quantized as they are read, so the float base is never whole in memory
  (one layer at a time). This holds for KerasHub-format presets (Kaggle
  handles such as llama2_7b_en, save_to_preset folders); an hf:// checkpoint
  is loaded in `precision` and then quantized. Measured on CPU only: on the tiny
  test presets the result equals from_preset + quantize exactly; the 7B
  peak memory on a 16 GB GPU has not been measured (no GPU was available).
- then `enable_lora` (standard factorisation, `kerastune_lab.finetune.lora`)
  freezes the base and trains A: (d_in, r) and B: (r, d_out) on `lora_targets`;
- `distribute` (JAX: data or model parallel) is set before the model is
  built; `remat` (blocks or activations) trades compute for memory;
- the run directory holds `adapter.lora.h5` (base preset, quantize mode,
  rank, alpha and targets recorded), not the base;
- the training backup (for resuming an interrupted run with the same
  command) holds the adapter and optimizer state only, read straight from
  the variables: never merged into the base, which is loaded again.

Data: `sarcastic_chat.jsonl` (shipped with the package: `data_file`) is trained on and
`sarcastic_chat_heldout.jsonl` gives the held-out perplexity
before and after. Llama's vocabulary has no `<|endoftext|>`, so the template
ends each turn with `{eos}`, the tokenizer's own end token (`</s>` for Llama,
`<|endoftext|>` for GPT-2).
"""

import dataclasses
import logging
import os

from kerastune_lab import testing
from kerastune_lab.config import setting
from kerastune_lab.data import chat
from kerastune_lab.distribute import (
    batch_shards,
    call_filled,
    fill_windows,
    preset_distribution,
    scope,
)
from kerastune_lab.evaluate import REPORT_PROMPTS, chat_metrics, chat_report, perplexity
from kerastune_lab.finetune import lora, remat
from kerastune_lab.finetune.causal_lm import compile_causal_lm, fit_packed
from kerastune_lab.finetune.quantize import load_quantized
from kerastune_lab.generate import ChatGenerator, chat_settings, make_sampler
from kerastune_lab.models import check_sequence_length, resolve_preset
from kerastune_lab.resume import Backup
from kerastune_lab.runs import CHAT, METRICS, REPORT
from kerastune_lab.shipped import data_file  # the chat pairs that ship with the package
from kerastune_lab.training import HistoryWriter

log = logging.getLogger("kerastune_lab")

# The kind of run this recipe makes, recorded in its run folder when it is
# created (`RunDir.kind`): what `kerastune predict`, `chat` and `export` read.
KIND = "lora"

# The base quantize modes this recipe trains on (see finetune/quantize.py).
QUANTIZE = ("int8", "int4", "none")
# lora_targets shorthands; anything else is a comma-separated list of layer
# names or patterns ("query,value", "feedforward_*").
TARGETS = {"attention": lora.ATTENTION_TARGETS, "all": lora.ALL_TARGETS}


@dataclasses.dataclass
class Config:
    preset: str = "llama2_7b_en"  # KerasHub causal LM (Llama-class; GPT-2 etc. work too), handle or folder
    data: str = data_file("sarcastic_chat.jsonl")  # JSONL of {"prompt","response"} or {"messages"}, or hf:NAME[:CONFIG][@SPLIT] with a "messages" or "prompt"/"response" column
    heldout_data: str = data_file("sarcastic_chat_heldout.jsonl")  # same format (hf:NAME reads its "test" split), never trained on
    template: str = chat.EOS_TEMPLATE  # {prompt} then {response}; {eos} = the tokenizer's end token
    loss_on: str = setting("assistant", choices=("assistant", "all"))  # assistant: loss on the replies only; all: every token
    sequence_length: int = setting(256, ge=16)  # tokens a training window
    pack: bool = True  # several short examples a window
    overlong: str = setting("truncate", choices=("truncate", "drop", "error"))  # what to do with an example longer than a window
    max_examples: int = setting(0, ge=0)  # train on the first N conversations only; 0 for all
    quantize: str = setting("int8", choices=QUANTIZE)  # the frozen base: int8 is weight-only
    precision: str = setting("auto", choices=("auto", "float32", "mixed_bfloat16", "mixed_float16"))  # the base's float layers and the compute; auto: from the accelerator (bfloat16 on TPUs and Ampere or newer GPUs, float16 with loss scaling on T4, P100, V100, float32 on CPU)
    lora_rank: int = setting(8, ge=1)  # r of A: (d_in, r), B: (r, d_out)
    lora_alpha: float = setting(16.0, gt=0)  # the update is scaled by alpha / rank (peft's usual 2 x rank)
    lora_targets: str = "query,value"  # comma-separated layer names/patterns, "attention" or "all" (every projection)
    distribute: str = setting("none", choices=("none", "data", "model"))  # data: all devices; model: the backbone layout map; JAX only
    model_parallel: int = setting(0, ge=0)  # distribute=model: devices on the model axis; 0: the most on which every weight splits evenly
    remat: str = setting("none", choices=("none", "activations", "blocks"))  # recompute in the backward pass instead of keeping: blocks = each transformer block (keras.remat), activations = the feedforward activations (Keras' RematScope); `kerastune plan` shows what each saves
    batch_size: int = setting(4, ge=1)  # windows a step (on all devices together)
    epochs: int = setting(1, ge=1)
    learning_rate: float = setting(2e-4, gt=0)  # AdamW on the LoRA factors only
    weight_decay: float = setting(0.0, ge=0)  # AdamW
    sampler: str = setting("greedy", choices=("greedy", "top_k", "top_p", "beam"))  # report generations: the KerasHub sampler
    temperature: float = setting(1.0, gt=0)  # report generations
    max_length: int = setting(128, ge=16)  # report generations: most tokens of prompt plus reply
    report_prompts: int = setting(6, ge=0)  # how many of REPORT_PROMPTS to answer before and after
    save_every_steps: int = setting(0, ge=0)  # back up (adapter + optimizer) every N steps as well as at epoch ends; 0: epoch ends only
    jit_compile: str = setting("auto", choices=("auto", "true", "false"))  # compile the train step (XLA; torch.compile on torch); auto: Keras' auto on jax/tensorflow, eager on torch (faster there: docs/benchmarks.md)
    seed: int = setting(1337, ge=0)


def smoke():
    """Tiny Llama preset, the first 32 shipped pairs, float32, offline."""
    return {
        "preset": testing.tiny_preset("llama"),
        "max_examples": 32,
        "sequence_length": 160,
        "precision": "float32",
        "lora_rank": 4,
        "lora_alpha": 8.0,
        "batch_size": 8,
        "epochs": 2,
        "learning_rate": 3e-2,
        "max_length": 64,
        "report_prompts": 2,
    }


def lora_targets(text):
    """The targets for `enable_lora` from the `lora_targets` config value."""
    return TARGETS.get(text.strip(), text)


def main(config, run):
    import keras_hub

    # Settings and data first, so that bad input fails before a large download.
    chat.check_settings(config.template, config.loss_on, config.overlong)
    sampler = make_sampler(config.sampler, config.temperature, seed=config.seed)
    conversations, heldout_conversations = chat.read_conversations(
        config.data, config.heldout_data, config.max_examples)
    preset = resolve_preset(config.preset, keras_hub.models.CausalLM)
    check_sequence_length(config.sequence_length, preset, config.preset)  # before the weights
    if os.path.isdir(preset):
        preset = os.path.abspath(preset)  # recorded in the adapter for `kerastune chat`

    # Devices: the distribution is set before the model is built, so each
    # weight is created where it belongs.
    distribution = preset_distribution(config.distribute, preset, config.model_parallel)
    shards = batch_shards(distribution, config.batch_size)  # devices a batch splits over
    with scope(distribution):
        # Model: the base quantized while it loads, then LoRA on the targets.
        with remat.build_scope(config.remat):
            model = load_quantized(keras_hub.models.CausalLM, preset, config.quantize,
                                   dtype=run.settings.precision)
            lora.enable_lora(model, config.lora_rank, config.lora_alpha,
                             lora_targets(config.lora_targets))
        remat.apply_remat(model, config.remat)
        check_sequence_length(config.sequence_length, preset, config.preset, model=model)
        counts = lora.parameter_counts(model)
        log.info("LoRA rank %d on %s: %d trainable of %d weights (%.4f%%), %s base",
                 config.lora_rank, config.lora_targets, counts["trainable"], counts["total"],
                 100 * counts["ratio"], config.quantize)
        template = chat.ChatTemplate(model.preprocessor.tokenizer, config.template)

        # Data: rendered, tokenised, loss-masked, packed.
        train, heldout = chat.pack_chat_data(
            conversations, heldout_conversations, template, config.sequence_length,
            config.loss_on, config.pack, config.overlong,
            sources=(f"chat data {config.data!r}", f"chat data {config.heldout_data!r}"))
        train, heldout = (fill_windows(p, config.batch_size, shards) for p in (train, heldout))
        heldout_inputs = chat.model_inputs(heldout)

        # Training setup: only the LoRA factors are trainable.
        compile_causal_lm(model, config.learning_rate, config.weight_decay,
                          jit_compile=run.settings.jit_compile)
        generator = ChatGenerator(model, template, sampler, config.max_length)
        prompts = REPORT_PROMPTS[:config.report_prompts]

        # Evaluation before tuning (B = 0: the base alone).
        before = call_filled(generator.replies, prompts, shards)
        perplexity_before = perplexity(model, *heldout_inputs, batch_size=config.batch_size)
        log.info("held-out perplexity before tuning: %.2f", perplexity_before)

        # Training: plain fit on token ids, the preprocessor detached, from
        # where the backup (trainable weights: the adapter) left off, if any.
        fit_packed(model, train, heldout, config.batch_size, config.epochs, config.seed,
                   backup=Backup(run, config.save_every_steps, weights="trainable"),
                   callbacks=[HistoryWriter(run)], tensorboard=run.settings.tensorboard)

        # Evaluation after tuning.
        perplexity_after = perplexity(model, *heldout_inputs, batch_size=config.batch_size)
        after = call_filled(generator.replies, prompts, shards)
        log.info("held-out perplexity after tuning: %.2f", perplexity_after)

        # Saving: the adapter (not the base), the template, metrics, the report.
        lora.save_adapter(model, run.adapter_path, preset=preset)
    run.write_json(CHAT, dict(chat_settings(template),
                              sequence_length=config.sequence_length))
    metrics = chat_metrics(
        perplexity_before, perplexity_after, train, heldout,
        adapter_bytes=os.path.getsize(run.adapter_path),
        trainable_parameters=counts["trainable"], total_parameters=counts["total"],
        trainable_ratio=counts["ratio"], quantize=config.quantize,
        lora_rank=config.lora_rank, lora_alpha=config.lora_alpha,
        lora_layers=len(lora.lora_state(model).layers))
    run.write_json(METRICS, metrics)
    run.write_text(REPORT, report(config, metrics, prompts, before, after))


def report(config, metrics, prompts, before, after):
    """report.md: adapter size, perplexity, data figures, replies before and after."""
    intro = [
        f"Preset `{config.preset}`, {config.quantize} base, LoRA rank {config.lora_rank} "
        f"(alpha {config.lora_alpha}) on `{config.lora_targets}` "
        f"({metrics['lora_layers']} layers), {config.epochs} epoch(s) at learning rate "
        f"{config.learning_rate}.",
        "",
        f"Adapter: {metrics['adapter_bytes']:,} bytes; {metrics['trainable_parameters']:,} "
        f"trainable of {metrics['total_parameters']:,} weights "
        f"({100 * metrics['trainable_ratio']:.4f}%).",
    ]
    return chat_report("LoRA chat", intro, config, metrics, prompts, before, after)
