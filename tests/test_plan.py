"""`kerastune plan` (kerastune_lab/plan.py, finetune/step_memory.py): the
recipe's train step compiled on abstract weights from the preset's config alone, on jax."""

import os
import re
import shutil

import numpy as np
import pytest

from kerastune_lab import plan as report
from kerastune_lab import testing
from kerastune_lab.errors import KerastuneError
from kerastune_lab.finetune.step_memory import ModelSpec, plan_step
from tests.conftest import BACKEND, assert_one_line_error

pytestmark = pytest.mark.skipif(BACKEND != "jax", reason="the plan compiles with jax")

ROWS = ("T4", "P100", "L4", "A100 40GB", "A100 80GB", "H100", "TPU v3-8")


@pytest.fixture(scope="module")
def config_only_llama(tmp_path_factory):
    """The tiny Llama preset without its weights file: config and tokenizer only."""
    folder = tmp_path_factory.mktemp("plan") / "llama_config_only"
    shutil.copytree(testing.tiny_preset("llama"), folder)
    os.remove(folder / "model.weights.h5")
    return str(folder)


def _lora_spec(preset, **changes):
    settings = dict(quantize="int8", precision="float32", lora_rank=4, lora_alpha=8.0,
                    lora_targets="query,value")
    settings.update(changes)
    return ModelSpec.from_preset(preset, **settings)


def test_counts_are_the_real_models_and_no_weight_is_read(config_only_llama):
    import keras_hub

    from kerastune_lab.finetune import lora
    from kerastune_lab.finetune.quantize import load_quantized

    spec = _lora_spec(config_only_llama)
    step = plan_step(spec, 2, 32)
    model = load_quantized(keras_hub.models.CausalLM, testing.tiny_preset("llama"), "int8",
                           dtype="float32", preprocessor=None)
    lora.enable_lora(model, 4, 8.0, "query,value")
    counts = lora.parameter_counts(model)
    floats = lora.count_lora_parameters(spec.backbone_cls, spec.config, 4, 8.0, "query,value")
    assert step.parameters == floats["total"] < counts["total"]  # int8 adds its scales
    assert step.trainable_parameters == counts["trainable"] > 0
    real_bytes = sum(np.asarray(v.value).nbytes for v in model.weights)
    assert step.weights_bytes == real_bytes
    # AdamW: two float32 moments a trainable weight, and its counters.
    assert 8 * counts["trainable"] <= step.optimizer_bytes < 8 * counts["trainable"] + 64
    assert step.temporary_bytes > 0
    assert step.device_bytes >= step.weights_bytes + step.optimizer_bytes + step.temporary_bytes
    int4 = plan_step(_lora_spec(config_only_llama, quantize="int4"), 1, 16)
    assert int4.parameters == step.parameters  # not the packed int4 kernels' bytes
    assert int4.weights_bytes < step.weights_bytes


def test_memory_follows_batch_sequence_and_base(config_only_llama):
    spec = _lora_spec(config_only_llama)
    small, batch, longer = (plan_step(spec, 1, 32), plan_step(spec, 8, 32),
                            plan_step(spec, 1, 256))
    assert batch.temporary_bytes > 2 * small.temporary_bytes
    assert longer.temporary_bytes > 2 * small.temporary_bytes
    assert batch.weights_bytes == small.weights_bytes


def test_a_recipe_that_is_not_a_causal_lm_is_refused():
    class Config:
        image_size = 224

    with pytest.raises(KerastuneError, match="the plan covers causal LM recipes"):
        report.spec_from_config(None, Config())


def test_kerastune_plan_lora_chat_prints_the_plan(cli):
    result = cli("plan", "lora_chat", "--smoke", "batch_size=2")
    assert result.code == 0, result
    out = result.stdout
    assert "LlamaBackbone, int8 base, float32, LoRA rank 4 on query,value" in out, out
    assert re.search(r"^device memory per step: \d+\.\d GiB", out, re.M), out
    assert re.search(r"^parameters: 17,936$", out, re.M), out
    assert re.search(r"^trainable parameters: 448 ", out, re.M), out
    assert re.search(r"^adapter file: 1\.8 KiB", out, re.M), out
    assert re.search(r"^device memory: weights .* \+ optimizer state .* \+ temporaries", out,
                     re.M), out
    assert "step: batch 2 x 160 tokens" in out
    for row in ROWS:
        assert re.search(rf"^{re.escape(row)}.*  yes$", out, re.M), (row, out)


def test_kerastune_plan_sarcastic_chat_is_full_fine_tuning(cli):
    result = cli("plan", "sarcastic_chat", "--smoke", "sequence_length=64")
    assert result.code == 0, result
    optimizer = re.search(r"optimizer state ([\d.]+) KiB", result.stdout).group(1)
    assert "none base" in result.stdout and "full fine-tuning" in result.stdout
    params = re.search(r"^parameters: ([\d,]+)$", result.stdout, re.M).group(1)
    assert re.search(rf"^trainable parameters: {params} \(100\.0000%\)", result.stdout, re.M)
    # AdamW: two float32 moments for every weight.
    assert float(optimizer) * 1024 >= 8 * int(params.replace(",", "")) - 1024


def test_kerastune_plan_bad_key_is_one_line(cli):
    assert_one_line_error(cli("plan", "lora_chat", "--smoke", "lora_rnak=4"), "lora_rnak")


def test_what_fits_and_the_settings_that_would(config_only_llama):
    spec = _lora_spec(config_only_llama)
    assert report.candidate_changes(spec, 8, 64) == [
        {"batch_size": 4}, {"sequence_length": 32}, {"quantize": "int4"}, {"remat": "blocks"},
        {"batch_size": 4, "sequence_length": 32, "quantize": "int4", "remat": "blocks"}]
    nothing = report.Accelerator("nothing", 1e-6, kind="detected")
    plan = report.make_plan(spec, 8, 64, accelerators=[nothing],
                            changes=[{"batch_size": 4}, {"batch_size": 2, "sequence_length": 32}])
    half = plan.variants[0][1]
    assert half.batch_size == 4 and half.device_bytes < plan.step.device_bytes
    between = (plan.step.device_bytes + half.device_bytes) / 2 / 2 ** 30
    small = report.Accelerator("small", between, kind="detected")
    assert not plan.fits(small)
    labels = [label for label, _ in plan.variants]
    assert labels == ["batch_size=4", "batch_size=2 sequence_length=32"]
    assert plan.fitting_variants(small) == labels
    line = plan.refusal(small)
    assert "\n" not in line and "small gives JAX" in line and "batch_size=4" in line
    assert "--no-plan" in line
    text = report.format_plan(plan, accelerators=[small])
    assert re.search(r"^small .* no; would with batch_size=4 \| batch_size=2", text, re.M), text
    roomy = report.Accelerator("roomy", 1.0, kind="detected")
    assert plan.refusal(roomy) is None


def test_run_plans_first_and_refuses_in_one_line():
    import types

    module = types.SimpleNamespace(RECIPE_NAME="lora_chat", lora_targets=lambda t: t)
    config = types.SimpleNamespace(
        preset=testing.tiny_preset("llama"), quantize="int8", precision="float32",
        lora_rank=4, lora_alpha=8.0, lora_targets="query,value", remat="blocks",
        batch_size=1, sequence_length=16, learning_rate=1e-3, weight_decay=0.0)
    assert report.plan_before_run(module, config) is None  # a CPU: nothing to plan
    tiny = report.Accelerator("a tiny GPU", 1e-7, kind="detected")
    config.quantize = "int4"  # and remat=blocks, batch 1, 16 tokens: no setting left to try
    with pytest.raises(KerastuneError, match=r"the plan needs .* a tiny GPU gives JAX 0\.0 GiB "
                                             r"\(`kerastune plan`"):
        report.plan_before_run(module, config, accelerator=tiny)
    big = report.Accelerator("a big GPU", 1.0, kind="detected")
    plan = report.plan_before_run(module, config, accelerator=big)
    assert plan.step.batch_size == 1 and plan.step.sequence_length == 16


def test_kerastune_run_plans_before_anything_is_written(cli, tmp_path, monkeypatch):
    # On a (monkeypatched) GPU too small for the step, `kerastune run` of a
    # chat recipe is refused in one line, exit 2, before the run folder is
    # made; --no-plan runs it; on a GPU it fits, the run logs the plan and trains.
    tiny = report.Accelerator("a tiny GPU", 1e-7, kind="detected")
    monkeypatch.setattr(report, "detected_accelerator", lambda: tiny)
    asked = []
    original = report.plan_before_run
    monkeypatch.setattr(report, "plan_before_run",
                        lambda *a, **k: asked.append(k.get("precision")) or original(*a, **k))
    out = tmp_path / "run"
    result = cli("run", "lora_chat", "--smoke", "--output-dir", out, "epochs=1")
    assert result.code == 2
    assert_one_line_error(result, "the plan needs", "a tiny GPU gives JAX 0.0 GiB",
                          "--no-plan to run anyway")
    assert not out.exists() and asked == ["float32"]  # the smoke settings' precision
    assert cli("run", "lora_chat", "--smoke", "--output-dir", out, "epochs=1",
               "--no-plan").code == 0
    assert len(asked) == 1  # not planned
    big = report.Accelerator("a big GPU", 64.0, kind="detected")
    monkeypatch.setattr(report, "detected_accelerator", lambda: big)
    again = tmp_path / "again"
    result = cli("run", "lora_chat", "--smoke", "--output-dir", again, "epochs=1")
    assert result.code == 0, result
    assert re.search(r"plan: \d+\.\d GiB a step on the device, a big GPU gives 64\.0 GiB",
                     result.stderr), result.stderr
    assert len(asked) == 2


def test_gpus_leave_jax_a_fraction(monkeypatch):
    t4 = report.ACCELERATORS[0]
    assert t4.usable_bytes() == int(15 * 0.75 * 2 ** 30)
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
    assert t4.usable_bytes() == int(15 * 0.9 * 2 ** 30)
    assert report.ACCELERATORS[-1].usable_bytes() == 16 * 2 ** 30  # a TPU core


def test_a_deep_model_scaled_from_one_and_two_blocks_is_close_to_the_whole(config_only_llama):
    from kerastune_lab.finetune.step_memory import scaled_step

    spec = _lora_spec(config_only_llama)
    deep = spec.replace(config=dict(spec.config, num_layers=6))
    whole, scaled = plan_step(deep, 2, 64), scaled_step(deep, 2, 64)
    assert scaled.parameters == whole.parameters
    assert scaled.trainable_parameters == whole.trainable_parameters
    assert scaled.weights_bytes == whole.weights_bytes
    assert scaled.device_bytes == pytest.approx(whole.device_bytes, rel=0.15)


def test_int8_with_float16_compute_is_one_line(config_only_llama):
    # Keras refuses int8 weights with float16 compute (as `load_quantized` does
    # on a T4, where precision=auto is mixed_float16).
    spec = _lora_spec(config_only_llama, precision="mixed_float16")
    with pytest.raises(KerastuneError, match=r"^quantize=int8 with precision=mixed_float16: "
                                             r"Quantization mode='int8' doesn't work"):
        plan_step(spec, 1, 16)
