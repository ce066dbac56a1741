"""`kerastune plan RECIPE [KEY=VALUE ...]`: will the recipe's training step fit?

    kerastune plan lora_chat                            # llama2_7b_en's config only
    kerastune plan lora_chat preset=./llama2_7b/ batch_size=1 sequence_length=512
    kerastune plan sarcastic_chat --smoke

    plan = make_plan(spec, batch_size=1, sequence_length=512, distribute="none")
    print(format_plan(plan))
    plan.fits(accelerator) / plan.refusal(accelerator)   # `kerastune run` plans first
    plan_before_run(module, config)                      # ... through this

Reads the recipe's config (with the overrides, typed and checked as `run`
checks them), builds its model from the preset's config.json alone, compiles
its train step on abstract weights (`finetune.step_memory`: XLA's count),
and prints (the command: plan_cli.py) the figures, a table of accelerators, and the settings that
would fit where it does not (compiled the same way). Hand-written: neither
Keras nor KerasHub plans memory.
"""

import dataclasses
import os

from kerastune_lab.errors import KerastuneError
from kerastune_lab.finetune.step_memory import GIB, gib, plan_step, scaled_step


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """name, memory of one device in GiB, devices (TPU cores), kind."""

    name: str
    memory_gib: float
    devices: int = 1
    kind: str = "gpu"

    def usable_bytes(self):
        """What JAX may use of one device: on a GPU, the fraction its
        allocator takes (XLA_PYTHON_CLIENT_MEM_FRACTION, 0.75 by default)."""
        fraction = 1.0
        if self.kind == "gpu":
            fraction = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.75"))
        return int(self.memory_gib * fraction * GIB)


ACCELERATORS = (
    Accelerator("T4 (Colab, Kaggle)", 15),
    Accelerator("P100 (Kaggle)", 16),
    Accelerator("L4", 24),
    Accelerator("A100 40GB", 40),
    Accelerator("A100 80GB", 80),
    Accelerator("H100", 80),
    Accelerator("TPU v3-8 (a core)", 16, devices=8, kind="tpu"),
)


@dataclasses.dataclass
class Plan:
    """A spec's step at the run's batch and sequence, and on TPU cores.

    step: StepMemory of the whole batch on one device.
    core_step: StepMemory of a TPU core with distribute=data (the batch
        split over 8 cores); None: as `step`.
    variants: [(label, StepMemory)]: the settings tried where it did not fit.
    """

    spec: object
    batch_size: int
    sequence_length: int
    distribute: str
    step: object
    core_step: object = None
    variants: list = dataclasses.field(default_factory=list)

    def step_on(self, accelerator):
        if accelerator.kind == "tpu" and self.core_step is not None:
            return self.core_step
        return self.step

    def fits(self, accelerator, step=None):
        step = step or self.step_on(accelerator)
        return step.device_bytes <= accelerator.usable_bytes()

    def fitting_variants(self, accelerator):
        return [label for label, step in self.variants if self.fits(accelerator, step)]

    def refusal(self, accelerator):
        """One line when the step does not fit `accelerator`, else None."""
        if self.fits(accelerator):
            return None
        need, have = gib(self.step_on(accelerator).device_bytes), accelerator.usable_bytes() / GIB
        would = self.fitting_variants(accelerator)
        hint = f"; would fit: {' | '.join(would)}" if would else ""
        return (f"the plan needs {need:.1f} GiB a step on the device and {accelerator.name} "
                f"gives JAX {have:.1f} GiB{hint} (`kerastune plan` for the figures, "
                "--no-plan to run anyway)")


def _label(changes):
    return " ".join(f"{k}={v}" for k, v in changes.items())


def candidate_changes(spec, batch_size, sequence_length):
    """The settings tried when the step does not fit, one change each, then
    all of them together."""
    tries = []
    if batch_size > 1:
        tries.append({"batch_size": max(1, batch_size // 2)})
    if sequence_length >= 32:
        tries.append({"sequence_length": sequence_length // 2})
    if spec.lora_rank and spec.quantize not in ("int4",):
        tries.append({"quantize": "int4"})
    if spec.remat != "blocks":
        tries.append({"remat": "blocks"})
    if len(tries) > 1:
        tries.append({k: v for change in tries for k, v in change.items()})
    return tries


def _step(spec, batch_size, sequence_length, changes=None):
    changes = dict(changes or {})
    batch_size = changes.pop("batch_size", batch_size)
    sequence_length = changes.pop("sequence_length", sequence_length)
    return scaled_step(spec.replace(**changes) if changes else spec, batch_size, sequence_length)


def make_plan(spec, batch_size, sequence_length, distribute="none", accelerators=ACCELERATORS,
              variants=True, changes=None):
    """Compiles the step (and, where it does not fit every accelerator, the
    `changes`: `candidate_changes` by default) and returns a `Plan`."""
    step = plan_step(spec, batch_size, sequence_length)
    core_step = None
    tpu = [a for a in accelerators if a.kind == "tpu"]
    if distribute == "data" and tpu and batch_size > 1:
        core_step = plan_step(spec, max(1, batch_size // tpu[0].devices), sequence_length)
    plan = Plan(spec, batch_size, sequence_length, distribute, step, core_step)
    if variants and not all(plan.fits(a) for a in accelerators):
        if changes is None:
            changes = candidate_changes(spec, batch_size, sequence_length)
        for change in changes:
            changed = _step(spec, batch_size, sequence_length, change)
            if changed.device_bytes < 0.99 * step.device_bytes:  # only what saves memory
                plan.variants.append((_label(change), changed))
    return plan


def host_load_gib(spec, step):
    """Host peak of loading, from the load path's measured model
    (docs/benchmarks.md, 7B int8 and int4 rows): the runtime (0.9 GiB) +
    the weights + 0.7 GiB for `load_quantized`; a float base loaded by
    `from_preset` is not measured: the runtime + the weights + 10% is a guess."""
    weights = step.weights_bytes / GIB
    if spec.quantize != "none":
        return 0.9 + weights + 0.7, "measured model: runtime + weights + 0.7 GiB"
    return 0.9 + weights * 1.1, "a guess: from_preset's peak is not measured"


def size_text(n_bytes):
    """GiB to 0.1 from 1 GiB up (rounded up), else MiB or KiB."""
    if n_bytes >= GIB:
        return f"{gib(n_bytes):.1f} GiB"
    if n_bytes >= 2 ** 20:
        return f"{n_bytes / 2 ** 20:.1f} MiB"
    return f"{n_bytes / 2 ** 10:.1f} KiB"


def _figures(step):
    return (f"weights {size_text(step.weights_bytes)} + optimizer state "
            f"{size_text(step.optimizer_bytes)} + temporaries {size_text(step.temporary_bytes)}")


def format_plan(plan, backend="jax", accelerators=ACCELERATORS):
    """The plan as the lines `kerastune plan` prints."""
    spec, step = plan.spec, plan.step
    host, how = host_load_gib(spec, step)
    lora = (f"LoRA rank {spec.lora_rank} on {spec.lora_targets}" if spec.lora_rank
            else "full fine-tuning")
    lines = [
        f"model: {spec.backbone_cls.__name__}, {spec.quantize} base, {spec.precision}, {lora}, "
        f"remat={spec.remat}",
        f"step: batch {plan.batch_size} x {plan.sequence_length} tokens, AdamW",
        f"parameters: {step.parameters:,}",
        f"trainable parameters: {step.trainable_parameters:,} "
        f"({100 * step.trainable_parameters / max(1, step.parameters):.4f}%)",
    ]
    if spec.lora_rank:
        lines.append(f"adapter file: {size_text(4 * step.trainable_parameters)} (float32 factors)")
    lines += [
        f"host peak of loading: {host:.1f} GiB ({how})",
        f"device memory: {_figures(step)}",
        f"device memory per step: {gib(step.device_bytes):.1f} GiB "
        f"({size_text(step.device_bytes)}: XLA's count of the compiled train step, "
        f"in {step.compile_seconds:.0f} s)",
    ]
    if plan.core_step is not None:
        lines.append(f"device memory per step on a TPU core (distribute=data, batch "
                     f"{plan.core_step.batch_size}): {gib(plan.core_step.device_bytes):.1f} GiB")
    lines += ["", f"{'accelerator':<22}{'memory':>8}{'for JAX':>10}  fits?"]
    for accelerator in accelerators:
        usable = accelerator.usable_bytes() / GIB
        if plan.fits(accelerator):
            verdict = "yes"
        else:
            would = plan.fitting_variants(accelerator)
            verdict = "no" + (f"; would with {' | '.join(would)}" if would else "")
        lines.append(f"{accelerator.name:<22}{accelerator.memory_gib:>4} GiB{usable:>6.1f} GiB"
                     f"  {verdict}")
    if plan.variants:
        lines += ["", "settings that save memory (compiled the same way, with 1 and 2 blocks "
                      "scaled to the model's depth):"]
        lines += [f"  {label}: {size_text(s.device_bytes)} ({_figures(s)})"
                  for label, s in plan.variants]
    lines += ["", "Compiled by XLA for this machine's CPU: a GPU or TPU compiler fuses and "
                  "schedules differently (benchmarks/plan_accuracy.py). GPUs: JAX takes "
                  "XLA_PYTHON_CLIENT_MEM_FRACTION of the memory (0.75 by default)."]
    if backend != "jax":
        lines.append(f"The run's backend is {backend}: the plan compiles with jax, and "
                     f"{backend} may use a different amount.")
    return "\n".join(lines)


# The 16-bit policy the plan compiles a precision=auto config in off an
# accelerator: what Ampere and newer GPUs and TPUs get; float16 on a T4 or
# P100 takes the same bytes.
PLAN_PRECISION = "mixed_bfloat16"


def is_plannable(config):
    """Whether the recipe is a causal LM recipe the plan covers (a `preset`,
    a `sequence_length` and a `batch_size`)."""
    return all(hasattr(config, key) for key in ("preset", "sequence_length", "batch_size"))


def spec_from_config(module, config, precision=None):
    """The `step.ModelSpec` of the model the recipe `module` builds with `config`.

    Args:
        module: the recipe module (its `lora_targets(text)` turns the
            `lora_targets` value into `enable_lora`'s targets, if it has one).
        config: its Config.
        precision: str or None. The dtype policy; None: `config.precision`,
            "auto" as PLAN_PRECISION.
    """
    from kerastune_lab.finetune.step_memory import ModelSpec

    if not is_plannable(config):
        raise KerastuneError(f"recipe {getattr(module, 'RECIPE_NAME', '?')!r}: the plan covers "
                             "causal LM recipes (preset, sequence_length, batch_size)")
    if precision is None:
        precision = getattr(config, "precision", "auto")
        precision = PLAN_PRECISION if precision == "auto" else precision
    rank = getattr(config, "lora_rank", 0)
    targets = getattr(config, "lora_targets", "query,value")
    if rank and callable(getattr(module, "lora_targets", None)):
        targets = module.lora_targets(targets)
    # The preset's name checked and its config.json fetched (only that) as a
    # run does: an unknown name, a gated model or no network is one line.
    import keras_hub

    from kerastune_lab.hub.presets import preset_download_errors
    from kerastune_lab.models import resolve_preset

    preset = resolve_preset(config.preset, keras_hub.models.CausalLM)
    with preset_download_errors(preset):
        return ModelSpec.from_preset(
            preset, quantize=getattr(config, "quantize", "none"), precision=precision,
            lora_rank=rank, lora_alpha=getattr(config, "lora_alpha", None), lora_targets=targets,
            remat=getattr(config, "remat", "none"), learning_rate=config.learning_rate,
            weight_decay=getattr(config, "weight_decay", 0.0))


def plan_config(module, config, precision=None, accelerators=None, variants=True):
    """The `Plan` of the recipe `module` run with `config`."""
    return make_plan(spec_from_config(module, config, precision), config.batch_size,
                            config.sequence_length, getattr(config, "distribute", "none"),
                            accelerators or ACCELERATORS, variants=variants)


def detected_accelerator():
    """The JAX accelerator of this process as a `Accelerator` (its
    allocator's limit as the memory), or None on a CPU or another backend."""
    import keras

    if keras.backend.backend() != "jax":
        return None
    import jax

    device = jax.devices()[0]
    if device.platform not in ("gpu", "tpu"):
        return None
    limit = (device.memory_stats() or {}).get("bytes_limit")
    if not limit:
        return None
    return Accelerator(f"this {device.device_kind}", round(limit / 2 ** 30, 2),
                       kind="detected")


def plan_before_run(module, config, accelerator=None, precision=None):
    """What `kerastune run` does first for a causal LM recipe on an
    accelerator: plans, and raises the one-line `KerastuneError` (exit 2) when
    the step does not fit. Does nothing off an accelerator or for another recipe.

    Args:
        module, config: the recipe and its resolved Config.
        accelerator: a `Accelerator`; None: `detected_accelerator()`.
        precision: str or None. The run's dtype policy (`run.settings.precision`);
            None: from `config.precision`.

    Returns:
        The `Plan`, or None when nothing was planned.
    """
    import logging

    accelerator = accelerator or detected_accelerator()
    if accelerator is None or not is_plannable(config):
        return None
    plan = plan_config(module, config, precision, accelerators=[accelerator])
    refusal = plan.refusal(accelerator)
    if refusal:
        raise KerastuneError(refusal)
    logging.getLogger("kerastune_lab").info(
        "plan: %.1f GiB a step on the device, %s gives %.1f GiB", gib(plan.step.device_bytes),
        accelerator.name, accelerator.usable_bytes() / 2 ** 30)
    return plan


def report_text(module, config, backend="jax"):
    return format_plan(plan_config(module, config), backend=backend)
