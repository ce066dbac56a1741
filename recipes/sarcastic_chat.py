"""Sarcastic chatbot: GPT-2 tuned on prompt/response pairs, loss on the replies only.

Launch:
    kerastune run sarcastic_chat --smoke                           # tiny GPT-2 and data, offline
    kerastune run sarcastic_chat                                   # gpt2_base_en on the shipped pairs
    kerastune run sarcastic_chat --backend torch epochs=5 learning_rate=3e-5
    kerastune run sarcastic_chat data=my_chats.jsonl heldout_data=my_heldout.jsonl
    kerastune run sarcastic_chat data=hf:ORG/CHATS heldout_data=hf:ORG/CHATS@test
    kerastune run sarcastic_chat loss_on=all pack=false sequence_length=256
Then:
    kerastune chat runs/sarcastic_chat-<time>                      # interactive
    echo "Is it Monday again?" | kerastune chat runs/sarcastic_chat-<time> --sampler greedy

Data: `sarcastic_chat.jsonl` (306 prompt/response pairs and 10 multi-turn
conversations written for this project, shipped with the package: `data_file`)
is trained on;
`sarcastic_chat_heldout.jsonl` (40 more) is never trained on and
gives the held-out perplexity before and after tuning. Each conversation is
rendered with `template`, tokenised with the model's own tokenizer (role
markers always the same ids), weighted 1 on the assistant's tokens only, and
packed into `sequence_length` windows (see `kerastune_lab.data.chat`).
"""

import dataclasses
import logging

from kerastune_lab import testing
from kerastune_lab.config import setting
from kerastune_lab.data import chat
from kerastune_lab.evaluate import REPORT_PROMPTS, chat_metrics, chat_report, perplexity
from kerastune_lab.finetune.causal_lm import compile_causal_lm, fit_packed
from kerastune_lab.generate import ChatGenerator, chat_settings, make_sampler
from kerastune_lab.models import check_sequence_length, from_preset, resolve_preset
from kerastune_lab.resume import Backup
from kerastune_lab.runs import CHAT, METRICS, REPORT
from kerastune_lab.shipped import data_file  # the chat pairs that ship with the package
from kerastune_lab.training import HistoryWriter

log = logging.getLogger("kerastune_lab")

# The kind of run this recipe makes, recorded in its run folder when it is
# created (`RunDir.kind`): what `kerastune predict`, `chat` and `export` read.
KIND = "causal_lm"



@dataclasses.dataclass
class Config:
    preset: str = "gpt2_base_en"  # KerasHub causal LM preset, kaggle:// or hf:// handle, or a preset folder
    data: str = data_file("sarcastic_chat.jsonl")  # JSONL of {"prompt","response"} or {"messages"}, or hf:NAME[:CONFIG][@SPLIT] with a "messages" or "prompt"/"response" column
    heldout_data: str = data_file("sarcastic_chat_heldout.jsonl")  # same format (hf:NAME reads its "test" split), never trained on
    template: str = chat.DEFAULT_TEMPLATE  # holds {prompt} then {response}; {eos} = the tokenizer's end token
    loss_on: str = setting("assistant", choices=("assistant", "all"))  # assistant: loss on the replies only; all: on every token
    sequence_length: int = setting(128, ge=16)  # tokens a training window (the model sees windows of this length)
    pack: bool = True  # several short examples a window, to waste less compute on padding
    overlong: str = setting("truncate", choices=("truncate", "drop", "error"))  # what to do with an example longer than a window
    max_examples: int = setting(0, ge=0)  # train on the first N conversations only; 0 for all
    batch_size: int = setting(8, ge=1)  # windows a step
    epochs: int = setting(3, ge=1)
    learning_rate: float = setting(5e-5, gt=0)  # AdamW; low, to keep what the preset knows
    weight_decay: float = setting(0.01, ge=0)  # AdamW
    sampler: str = setting("greedy", choices=("greedy", "top_k", "top_p", "beam"))  # report generations: the KerasHub sampler
    temperature: float = setting(1.0, gt=0)  # report generations
    max_length: int = setting(96, ge=16)  # report generations: most tokens of prompt plus reply
    report_prompts: int = setting(6, ge=0)  # how many of REPORT_PROMPTS to answer before and after
    precision: str = setting("auto", choices=("auto", "float32", "mixed_bfloat16", "mixed_float16"))  # auto: from the accelerator (bfloat16 on TPUs and Ampere or newer GPUs, float16 with loss scaling on T4, P100, V100, float32 on CPU)
    save_every_steps: int = setting(0, ge=0)  # back up every N steps as well as at epoch ends (0: epoch ends only)
    jit_compile: str = setting("auto", choices=("auto", "true", "false"))  # compile the train step (XLA; torch.compile on torch); auto: Keras' auto on jax/tensorflow, eager on torch (faster there: docs/benchmarks.md)
    seed: int = setting(1337, ge=0)


def smoke():
    """Tiny GPT-2 preset, the first 48 shipped pairs, offline."""
    return {
        "preset": testing.tiny_preset("gpt2"),
        "max_examples": 48,
        "sequence_length": 128,
        "batch_size": 8,
        "epochs": 2,
        "learning_rate": 3e-3,
        "max_length": 72,
        "report_prompts": 3,
    }


def main(config, run):
    import keras_hub

    # Settings and data first, so that bad input fails before a large download.
    chat.check_settings(config.template, config.loss_on, config.overlong)
    sampler = make_sampler(config.sampler, config.temperature, seed=config.seed)
    conversations, heldout_conversations = chat.read_conversations(
        config.data, config.heldout_data, config.max_examples)

    # Model: a KerasHub causal LM; its tokenizer drives the data.
    preset = resolve_preset(config.preset, keras_hub.models.CausalLM)
    check_sequence_length(config.sequence_length, preset, config.preset)  # before the weights
    model = from_preset(keras_hub.models.CausalLM, preset)
    check_sequence_length(config.sequence_length, preset, config.preset, model=model)
    template = chat.ChatTemplate(model.preprocessor.tokenizer, config.template)

    # Data: rendered, tokenised, loss-masked, packed (held-out: one example a
    # window, so no example sees another while it is scored).
    train, heldout = chat.pack_chat_data(
        conversations, heldout_conversations, template, config.sequence_length,
        config.loss_on, config.pack, config.overlong,
        sources=(f"chat data {config.data!r}", f"chat data {config.heldout_data!r}"))
    heldout_inputs = chat.model_inputs(heldout)

    # Training setup: the loss is averaged over the weighted (assistant) tokens.
    compile_causal_lm(model, config.learning_rate, config.weight_decay,
                      jit_compile=run.settings.jit_compile)
    generator = ChatGenerator(model, template, sampler, config.max_length)
    prompts = REPORT_PROMPTS[:config.report_prompts]

    # Evaluation before tuning.
    before = generator.replies(prompts)
    perplexity_before = perplexity(model, *heldout_inputs, batch_size=config.batch_size)
    log.info("held-out perplexity before tuning: %.2f", perplexity_before)

    # Training: plain fit on token ids, the preprocessor detached, from where
    # the backup of an interrupted run left off, if any.
    fit_packed(model, train, heldout, config.batch_size, config.epochs, config.seed,
               backup=Backup(run, config.save_every_steps), callbacks=[HistoryWriter(run)],
               tensorboard=run.settings.tensorboard)

    # Evaluation after tuning.
    perplexity_after = perplexity(model, *heldout_inputs, batch_size=config.batch_size)
    after = generator.replies(prompts)
    log.info("held-out perplexity after tuning: %.2f", perplexity_after)

    # Saving: the model as a KerasHub preset, the template for `kerastune chat`,
    # metrics and the report.
    run.save_model(model)
    run.write_json(CHAT, dict(chat_settings(template), sequence_length=config.sequence_length))
    metrics = chat_metrics(perplexity_before, perplexity_after, train, heldout)
    run.write_json(METRICS, metrics)
    run.write_text(REPORT, report(config, metrics, prompts, before, after))


def report(config, metrics, prompts, before, after):
    """report.md: perplexity, data figures, and replies before and after."""
    intro = [f"Preset `{config.preset}`, loss on `{config.loss_on}` tokens, "
             f"{config.epochs} epoch(s) at learning rate {config.learning_rate}."]
    return chat_report("Sarcastic chat", intro, config, metrics, prompts, before, after,
                       note="Packed examples share a causal mask: a later example in a "
                            "window can attend to the earlier ones.")
