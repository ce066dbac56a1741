"""Evaluation of the chat (causal language model) recipes: held-out
perplexity, the prompts answered before and after tuning, and the chat
recipes' report.md. Nothing here imports matplotlib.
"""

# Prompts for the chat recipes' before/after replies in report.md (in neither
# shipped data file).
REPORT_PROMPTS = [
    "Do you think it will rain on my birthday?",
    "How do I become a better cook?",
    "What's your opinion on Mondays?",
    "Can you help me choose a new phone?",
    "Why is my cat staring at me?",
    "Any tips for my first marathon?",
]


def perplexity(model, x, y, sample_weight, batch_size=8):
    """exp of the mean next-token cross-entropy where `sample_weight` > 0.

    Args:
        model: a KerasHub `CausalLM`; run with its preprocessor detached.
        x: dict of numpy arrays {"token_ids", "padding_mask"}.
        y: numpy array of the next tokens, like `x["token_ids"]`.
        sample_weight: numpy array like `y`. Weights of each token's loss.
        batch_size: int. Sequences a forward pass. Defaults to 8.
    """
    import numpy as np

    from kerastune_lab.distribute import whole_outputs
    from kerastune_lab.models import detached_preprocessor

    total, count = 0.0, 0.0
    with detached_preprocessor(model), whole_outputs():
        for start in range(0, len(y), batch_size):
            batch = {k: v[start:start + batch_size] for k, v in x.items()}
            logits = np.asarray(model.predict_on_batch(batch), dtype="float32")
            top = logits.max(axis=-1, keepdims=True)
            log_z = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]
            target = np.take_along_axis(logits, y[start:start + batch_size, ..., None],
                                        axis=-1)[..., 0]
            w = sample_weight[start:start + batch_size]
            total += float(((log_z - target) * w).sum())
            count += float(w.sum())
    if count == 0:
        raise ValueError("perplexity: every sample weight is 0")
    return float(np.exp(total / count))


def chat_metrics(perplexity_before, perplexity_after, train, heldout, **extra):
    """The chat recipes' `metrics.json`: held-out perplexity before and after
    tuning, and the figures of the packed data (`data.packing.Packed`);
    `extra` adds the recipe's own (adapter size, ...)."""
    return {
        "heldout_perplexity_before": perplexity_before,
        "heldout_perplexity_after": perplexity_after,
        **extra,
        "padding_fraction_before_packing": train.padding_before,
        "padding_fraction_after_packing": train.padding_after,
        "train": train.summary(),
        "heldout": heldout.summary(),
    }


def chat_report(title, intro, config, metrics, prompts, before, after, note=""):
    """A chat recipe's report.md: `intro` (lines), held-out perplexity and
    padding before and after, the data figures, then each prompt's reply
    before and after tuning."""
    train = metrics["train"]
    lines = [f"# {title}", "", *intro, "",
             "| | before | after |",
             "|---|---|---|",
             f"| held-out perplexity | {metrics['heldout_perplexity_before']:.2f} | "
             f"{metrics['heldout_perplexity_after']:.2f} |",
             f"| padding fraction (train) | {train['padding_fraction_before_packing']:.3f} | "
             f"{train['padding_fraction_after_packing']:.3f} |",
             "",
             f"Training: {train['examples']} examples in {train['windows']} windows of "
             f"{config.sequence_length + 1} tokens: the model reads "
             f"sequence_length={config.sequence_length} of them and predicts each next "
             f"one, so a window holds one token more ({train['truncated']} truncated, "
             f"{train['dropped']} dropped).{' ' + note if note else ''}",
             "",
             f"## Replies ({config.sampler} sampler, temperature {config.temperature}, "
             f"max_length {config.max_length})",
             ""]
    for prompt, old, new in zip(prompts, before, after):
        old, new = (" ".join(text.split()) or "(empty)" for text in (old, new))
        lines += [f"**{prompt}**", "", f"- before: {old}", f"- after: {new}", ""]
    return "\n".join(lines)
