"""A recipe's train step compiled on abstract weights: the compiler's memory count.

    spec = ModelSpec.from_preset(dir, quantize="int8", precision="mixed_bfloat16",
                                 lora_rank=8, lora_targets="query,value")
    step = plan_step(spec, batch_size=1, sequence_length=512)
    step.device_bytes        # what one train step holds on the device
    step.weights_bytes, step.optimizer_bytes, step.temporary_bytes

The model is the one the recipe builds (the base quantized as
`finetune.quantize.load_quantized` leaves it, `lora.enable_lora` on the
targets, the `remat` scope, the dtype policy of `precision`), built from
the preset's config.json alone under `abstract_weights`: every weight has a
shape and a dtype, none has memory. It is compiled as the recipe compiles it
(`finetune.causal_lm.compile_causal_lm`: AdamW, the masked loss, the
accuracy metric), and Keras' own JAX `train_step` (the function `fit` jits,
with the state donated) is lowered on `jax.ShapeDtypeStruct`s and compiled
by XLA for this machine's CPU. XLA's `memory_analysis()` then says how many
bytes the arguments (weights, optimizer state, metrics), the outputs not
aliased to donated arguments, and the temporaries take. Hand-written
because neither Keras nor KerasHub plans memory; what it counts is XLA's.

The compile is XLA's CPU compiler: a GPU or TPU compiler fuses and
schedules differently, so its temporaries differ (benchmarks/plan_accuracy.py
checks the CPU figure against the measured peak of the same step).
"""

import dataclasses
import math

import numpy as np

from kerastune_lab.errors import KerastuneError

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the recipe's model is built from: the preset's config and the
    recipe settings that change its memory.

    Args:
        backbone_cls: a KerasHub backbone class.
        config: dict. Its constructor arguments (config.json's "config").
        quantize: str. "none", "int8", "int8_dynamic" or "int4".
        precision: str. A Keras dtype policy ("float32", "mixed_bfloat16",
            "mixed_float16", "bfloat16").
        lora_rank: int. 0: no LoRA, every weight trains (full fine-tuning).
        lora_alpha: float or None.
        lora_targets: str or list. As `lora.enable_lora`'s targets.
        remat: str. "none", "activations" or "blocks" (`finetune.remat`).
        learning_rate, weight_decay: float. AdamW's (no effect on memory).
    """

    backbone_cls: type
    config: dict
    quantize: str = "none"
    precision: str = "float32"
    lora_rank: int = 0
    lora_alpha: float | None = None
    lora_targets: object = "query,value"
    remat: str = "none"
    learning_rate: float = 1e-4
    weight_decay: float = 0.0

    @classmethod
    def from_preset(cls, preset, **settings):
        """Reads `preset`'s config.json (a KerasHub-format preset folder or
        handle; nothing else of it is read)."""
        from kerastune_lab import compat

        loader = compat.preset_loader(preset)
        return cls(loader.check_backbone_class(), dict(loader.config["config"]), **settings)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """One train step's memory, in bytes, from XLA's `memory_analysis()`.

    weights_bytes: the model's weights (trainable and frozen).
    optimizer_bytes: the optimizer's state (AdamW: two moments a trainable
        weight, and its step counters).
    temporary_bytes: XLA's temporaries (activations kept for the backward
        pass, gradients, workspace).
    output_bytes: outputs not written in place of donated inputs.
    """

    batch_size: int
    sequence_length: int
    parameters: int
    trainable_parameters: int
    weights_bytes: int
    optimizer_bytes: int
    other_argument_bytes: int
    temporary_bytes: int
    output_bytes: int
    compile_seconds: float

    @property
    def device_bytes(self):
        """Bytes the device holds during one step: arguments, outputs that do
        not reuse a donated argument's buffer, and temporaries."""
        return (self.weights_bytes + self.optimizer_bytes + self.other_argument_bytes
                + self.temporary_bytes + self.output_bytes)


def _bytes(variables):
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)


def _count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def task_class(backbone_cls):
    """The KerasHub CausalLM class whose `backbone_cls` is `backbone_cls`."""
    import keras_hub

    for name in dir(keras_hub.models):
        candidate = getattr(keras_hub.models, name)
        if (isinstance(candidate, type) and issubclass(candidate, keras_hub.models.CausalLM)
                and getattr(candidate, "backbone_cls", None) is backbone_cls):
            return candidate
    raise KerastuneError(f"no KerasHub CausalLM for {backbone_cls.__name__}: the plan "
                         "covers causal LM recipes")


def build_abstract(spec, abstract=True):
    """Builds the recipe's CausalLM (no preprocessor) from `spec` with
    abstract weights (real ones, random, with `abstract=False`: for
    benchmarks/plan_accuracy.py), compiled as the recipe compiles it."""
    import contextlib

    from kerastune_lab.finetune import lora
    from kerastune_lab.finetune._backbone import abstract_weights
    from kerastune_lab.finetune.causal_lm import compile_causal_lm
    from kerastune_lab.finetune.quantize import build_quantized
    from kerastune_lab.finetune.remat import apply_remat, build_scope

    weightless = abstract_weights if abstract else contextlib.nullcontext
    with weightless(), build_scope(spec.remat):
        if spec.quantize == "none":
            backbone = spec.backbone_cls.from_config(dict(spec.config, dtype=spec.precision))
        else:
            try:
                backbone = build_quantized(spec.backbone_cls, spec.config, spec.quantize,
                                           dtype=spec.precision)
            except ValueError as e:  # Keras: int8 with float16 compute (as load_quantized)
                raise KerastuneError(f"quantize={spec.quantize} with precision="
                                     f"{spec.precision}: {str(e).splitlines()[0]}") from None
        if spec.lora_rank:
            lora.enable_lora(backbone, spec.lora_rank, spec.lora_alpha, spec.lora_targets)
    apply_remat(backbone, spec.remat)
    # The task adds no weights; its optimizer's counters are scalars (real).
    task = task_class(spec.backbone_cls)(backbone=backbone, preprocessor=None)
    compile_causal_lm(task, spec.learning_rate, spec.weight_decay, jit_compile=True)
    with weightless():  # the moments: a shape, no memory
        task.optimizer.build(task.trainable_variables)
    # The loss's and metrics' state, as `fit` builds it on its first batch
    # (here on a batch of one token: real, a few bytes).
    y = np.zeros((1, 1), "int32")
    y_pred = np.zeros((1, 1, int(spec.config.get("vocabulary_size", 8))), "float32")
    weight = np.ones((1, 1), "float32")
    task.compute_loss(None, y, y_pred, weight)
    task.compute_metrics(None, y, y_pred, weight)
    return task


def _struct(variable):
    import jax

    return jax.ShapeDtypeStruct(tuple(variable.shape), variable.dtype)


def step_structs(task, batch_size, sequence_length):
    """(state, data) of Keras' JAX `train_step` as `jax.ShapeDtypeStruct`s:
    the four variable groups `fit` passes, and (x, y, sample_weight) as
    `finetune.causal_lm.fit_packed` feeds them."""
    import jax

    groups = (task.trainable_variables, task.non_trainable_variables,
              task.optimizer.variables, task.metrics_variables)
    state = tuple([_struct(v) for v in group] for group in groups)
    shape = (batch_size, sequence_length)
    x = {"token_ids": jax.ShapeDtypeStruct(shape, "int32"),
         "padding_mask": jax.ShapeDtypeStruct(shape, "bool")}
    return state, (x, jax.ShapeDtypeStruct(shape, "int32"),
                   jax.ShapeDtypeStruct(shape, "float32"))


def plan_step(spec, batch_size, sequence_length):
    """Compiles `spec`'s train step for (batch_size, sequence_length) windows
    on abstract values and returns its `StepMemory`.

    Args:
        spec: ModelSpec.
        batch_size: int. Windows a step (on one device).
        sequence_length: int. Tokens a window.
    """
    import time

    import jax
    import keras

    if keras.backend.backend() != "jax":
        raise KerastuneError("the plan compiles with jax: run it with --backend jax "
                             f"(the backend now is {keras.backend.backend()})")
    saved_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(spec.precision)  # as the runner sets it for the run
    try:
        task = build_abstract(spec)
        state, data = step_structs(task, batch_size, sequence_length)
        start = time.perf_counter()
        compiled = jax.jit(task.train_step, donate_argnums=0).lower(state, data).compile()
        seconds = time.perf_counter() - start
    finally:
        keras.config.set_dtype_policy(saved_policy)
    memory = step_memory(task, compiled.memory_analysis(), batch_size, sequence_length, seconds)
    if spec.quantize != "none" and spec.lora_rank:
        # The float model's weights: not int8's scales, nor int4's packed bytes.
        from kerastune_lab.finetune.lora import count_lora_parameters

        counts = count_lora_parameters(spec.backbone_cls, spec.config, spec.lora_rank,
                                       spec.lora_alpha, spec.lora_targets)
        memory = dataclasses.replace(memory, parameters=counts["total"])
    return memory


def step_memory(task, analysis, batch_size, sequence_length, seconds=0.0):
    """The `StepMemory` of `task`'s train step from XLA's `memory_analysis()`."""
    weights = _bytes(task.trainable_variables) + _bytes(task.non_trainable_variables)
    optimizer = _bytes(task.optimizer.variables)
    other = analysis.argument_size_in_bytes - weights - optimizer  # metrics state, the batch
    output = max(0, analysis.output_size_in_bytes - analysis.alias_size_in_bytes)
    return StepMemory(
        batch_size=batch_size, sequence_length=sequence_length,
        parameters=_count(task.weights), trainable_parameters=_count(task.trainable_weights),
        weights_bytes=weights, optimizer_bytes=optimizer, other_argument_bytes=max(0, other),
        temporary_bytes=analysis.temp_size_in_bytes, output_bytes=output,
        compile_seconds=seconds)


def gib(n_bytes):
    """Bytes as GiB, rounded up to 0.1 (a plan should not round a need down)."""
    return math.ceil(n_bytes / GIB * 10) / 10


def scaled_step(spec, batch_size, sequence_length, most_layers=4):
    """`plan_step` of a deep model from the same model with 1 and 2
    transformer blocks, scaled linearly to its `num_layers` (each block adds
    the same weights, optimizer state and temporaries): seconds instead of a
    minute for a 7B. Models of `most_layers` blocks or fewer are compiled whole.
    """
    layers = int(spec.config.get("num_layers", 0))
    if layers <= most_layers:
        return plan_step(spec, batch_size, sequence_length)
    one, two = (plan_step(spec.replace(config=dict(spec.config, num_layers=n)), batch_size,
                          sequence_length) for n in (1, 2))
    fields = {}
    for field in dataclasses.fields(StepMemory):
        a, b = getattr(one, field.name), getattr(two, field.name)
        if field.name in ("batch_size", "sequence_length"):
            fields[field.name] = a
        elif field.name == "compile_seconds":
            fields[field.name] = a + b
        else:
            fields[field.name] = max(0, a + (layers - 1) * (b - a))
    return StepMemory(**fields)
