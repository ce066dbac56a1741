"""Chat replies from a KerasHub causal LM: samplers, the template, stop tokens.

    from kerastune_lab.generate import load_chat_generator
    chat = load_chat_generator("runs/sarcastic_chat-20250101-120000", sampler="top_p",
                               temperature=0.8)
    chat.reply("Any plans for the weekend?")

Sampling is KerasHub's (`keras_hub.samplers`: greedy, top-k, top-p, beam,
each with a temperature) through `CausalLM.generate`. What is written here is
the chat around it: prompts rendered with the run's `ChatTemplate` (tokenised
the way training saw them, so the model is called with its preprocessor
detached), stopping at the end token or a single-token role marker, and
cutting the reply there.
"""

import os

import numpy as np

from kerastune_lab.data.chat_template import ChatTemplate
from kerastune_lab.distribute import whole_outputs
from kerastune_lab.errors import KerastuneError
from kerastune_lab.models import detached_preprocessor
from kerastune_lab.runs import ADAPTER, CHAT, CONFIG

SAMPLERS = ("greedy", "top_k", "top_p", "beam")
# The names `runs` gives a chat run's template and a LoRA run's adapter, kept
# here for the scripts and notebooks that import them from this module.
CHAT_FILE, ADAPTER_FILE = CHAT, ADAPTER


def make_sampler(name="top_p", temperature=1.0, top_k=50, top_p=0.9, num_beams=4, seed=None):
    """Returns a `keras_hub.samplers.Sampler`.

    Args:
        name: str. One of "greedy", "top_k", "top_p", "beam". Defaults to "top_p".
        temperature: float. Logits are divided by it; lower is more
            predictable. Defaults to 1.0.
        top_k: int. Tokens kept by "top_k" (and the cap of "top_p"). Defaults to 50.
        top_p: float. Probability mass kept by "top_p". Defaults to 0.9.
        num_beams: int. Beams of "beam". Defaults to 4.
        seed: int or None. Seed of the random samplers.
    """
    import keras_hub

    if name not in SAMPLERS:
        raise KerastuneError(f"sampler {name!r}: expected one of {', '.join(SAMPLERS)}")
    if not temperature > 0:
        raise KerastuneError(f"temperature={temperature}: expected a number above 0")
    if top_k < 1 or num_beams < 1:
        raise KerastuneError(f"top_k={top_k}, num_beams={num_beams}: expected 1 or more")
    if not 0 < top_p <= 1:
        raise KerastuneError(f"top_p={top_p}: expected a number in (0, 1]")
    samplers = keras_hub.samplers
    if name == "greedy":
        return samplers.GreedySampler(temperature=temperature)
    if name == "top_k":
        return samplers.TopKSampler(k=top_k, seed=seed, temperature=temperature)
    if name == "top_p":
        return samplers.TopPSampler(p=top_p, k=top_k, seed=seed, temperature=temperature)
    return samplers.BeamSampler(num_beams=num_beams, temperature=temperature)


class ChatGenerator:
    """Replies to prompts with a KerasHub `CausalLM` and a `ChatTemplate`.

    Args:
        model: a KerasHub `CausalLM` (its preprocessor is detached while
            generating, and put back).
        template: ChatTemplate. How prompts are rendered and tokenised.
        sampler: str or `keras_hub.samplers.Sampler`. Defaults to "top_p".
        max_length: int. Most tokens of prompt plus reply. Defaults to 128.
        **sampler_args: for `make_sampler` when `sampler` is a name
            (temperature, top_k, top_p, num_beams, seed).

    Example:

    ```python
    chat = ChatGenerator(causal_lm, ChatTemplate(causal_lm.preprocessor.tokenizer),
                         sampler="greedy", max_length=64)
    chat.replies(["Is it Monday?", "Do you like meetings?"])
    ```
    """

    def __init__(self, model, template, sampler="top_p", max_length=128, **sampler_args):
        self.model = model
        self.template = template
        if isinstance(sampler, str):
            sampler = make_sampler(sampler, **sampler_args)
        limit = getattr(model.backbone, "max_sequence_length", None)
        if max_length < 2:
            raise KerastuneError(f"max_length={max_length}: expected 2 or more")
        if limit and max_length > limit:
            raise KerastuneError(
                f"max_length={max_length}: expected at most {limit}, the model's "
                "max_sequence_length")
        self.max_length = max_length
        # What `CausalLM.compile(sampler=...)` does, without resetting the
        # optimizer of a model being trained.
        model.sampler = sampler
        model.generate_function = None

    def __repr__(self):
        return f"ChatGenerator({type(self.model).__name__}, max_length={self.max_length})"

    def replies(self, prompts, history=()):
        """Returns the assistant's reply to each prompt (one batch).

        Args:
            prompts: list of str.
            history: list of (user, assistant) pairs that came before, the
                same for every prompt.
        """
        prompts = list(prompts)
        if not prompts:
            return []
        encoded = [self.template.encode_prompt(p, history) for p in prompts]
        longest = max(len(ids) for ids in encoded)
        if longest >= self.max_length:
            raise KerastuneError(
                f"prompt of {longest} tokens leaves no room to reply within "
                f"max_length={self.max_length}; raise max_length or shorten the prompt")
        # KerasHub's samplers stop once every row holds a stop token past its
        # prompt, padding included: pad with an id that is not one (the tiny
        # GPT-2's pad id 0 is also its end token).
        pad = getattr(self.template.tokenizer, "pad_token_id", None) or 0
        while pad in self.template.stop_token_ids:
            pad += 1
        token_ids = np.full((len(prompts), self.max_length), pad, dtype="int32")
        padding_mask = np.zeros((len(prompts), self.max_length), dtype="bool")
        for row, ids in enumerate(encoded):
            token_ids[row, :len(ids)] = ids
            padding_mask[row, :len(ids)] = True
        with detached_preprocessor(self.model), whole_outputs():
            out = self.model.generate(
                {"token_ids": token_ids, "padding_mask": padding_mask},
                stop_token_ids=self.template.stop_token_ids or None)
        generated = np.asarray(out["token_ids"])
        return [self.template.decode_reply(generated[row, len(ids):])
                for row, ids in enumerate(encoded)]

    def reply(self, prompt, history=()):
        """Returns the assistant's reply to one prompt."""
        return self.replies([prompt], history)[0]


def load_chat_generator(run_dir=None, sampler="top_p", max_length=128, adapter=None,
                        preset=None, **sampler_args):
    """A `ChatGenerator` for the model a chat run saved, or for a LoRA adapter.

    Args:
        run_dir: str or None. A finished chat run that wrote `chat.json` and
            either `model/` (a whole model) or `adapter.lora.h5` (LoRA: the
            base is loaded from the preset the adapter records, quantized as
            recorded, with the adapter on top).
        sampler, max_length, **sampler_args: see `ChatGenerator`.
        adapter: str or None. A LoRA adapter file or peft adapter folder,
            instead of `run_dir`. The template is the `chat.json` beside the
            file (inside the folder), else `EOS_TEMPLATE`.
        preset: str or None. The base preset for a LoRA run or adapter,
            instead of the one the adapter records.

    Example:

    ```python
    chat = load_chat_generator(adapter="runs/lora_chat-1/adapter.lora.h5",
                               preset="llama2_7b_en", sampler="greedy")
    ```
    """
    import json
    import logging

    import keras_hub

    from kerastune_lab import run_files
    from kerastune_lab.data.chat_template import EOS_TEMPLATE
    from kerastune_lab.models import load_run_model

    if (run_dir is None) == (adapter is None):
        raise KerastuneError("chat: expected a run dir or an adapter file, not both"
                             if adapter else "chat: expected a run dir or an adapter file")
    settings, dtype = None, None
    if run_dir is not None:
        run = run_files.check_run(run_dir)
        if run.kind not in ("causal_lm", "lora") or not os.path.exists(run.chat_path):
            raise KerastuneError(
                f"run dir {run_dir!r} has no {CHAT_FILE}: not a chat run (expected a run of a "
                "chat recipe such as sarcastic_chat)")
        settings = run_files.chat_settings(run.path)
        # The base's dtype as the run trained it: the policy it recorded
        # ("precision"), or the older lora_chat runs' `dtype` key.
        older = run_files.run_config(run.path).get("dtype")  # checks config.json too
        dtype = run_files.read_json(run.path, CONFIG).get("precision") or older
        if run.kind == "lora":
            adapter = run.adapter_path
        elif preset is not None:
            raise KerastuneError(f"preset {preset!r}: run dir {run_dir!r} holds a whole "
                                 "model, not a LoRA adapter; leave out --preset")
    else:
        # Beside an adapter file, or inside a peft adapter folder (`kerastune export`).
        folder = adapter if os.path.isdir(adapter) else os.path.dirname(os.path.abspath(adapter))
        beside = os.path.join(folder, CHAT_FILE)
        if os.path.exists(beside):
            try:
                with open(beside, encoding="utf-8") as f:
                    settings = json.load(f)
            except (OSError, ValueError) as e:
                raise KerastuneError(f"{beside!r} beside adapter {adapter!r} cannot be "
                                     f"read ({e}): expected the JSON kerastune writes "
                                     "there") from None
            if not isinstance(settings, dict) or not isinstance(settings.get("template"), str):
                raise KerastuneError(f"{beside!r} beside adapter {adapter!r}: expected a "
                                     "JSON object with a \"template\" string")
        else:
            logging.getLogger("kerastune_lab").info(
                "no %s beside %s: chatting with the template %s", CHAT_FILE, adapter,
                EOS_TEMPLATE)
            settings = {"template": EOS_TEMPLATE}
    if adapter is not None:
        from kerastune_lab.finetune.lora import load_with_adapter

        model, _ = load_with_adapter(adapter, preset, dtype=dtype)
    else:
        model = load_run_model(run, keras_hub.models.CausalLM)
    return ChatGenerator(model, chat_template_of(model, settings), sampler, max_length,
                         **sampler_args)


def chat_template_of(model, settings):
    """The `ChatTemplate` of a run's `chat.json` settings, over `model`'s tokenizer."""
    return ChatTemplate(model.preprocessor.tokenizer, settings["template"],
                        settings.get("add_start_token", True))


def chat_settings(template):
    """What `load_chat_generator` needs of a template, for `chat.json`."""
    return {"template": template.template, "add_start_token": template.add_start_token,
            "markers": template.markers}
