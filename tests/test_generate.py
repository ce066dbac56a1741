"""Generation: samplers, a tiny chat model that learns, `kerastune chat` through a pipe."""

import pytest

from kerastune_lab import testing
from kerastune_lab.data import chat
from kerastune_lab.errors import KerastuneError
from kerastune_lab.generate import CHAT_FILE, ChatGenerator, chat_settings, make_sampler
from kerastune_lab.runs import RunDir
from tests.conftest import assert_one_line_error, run_cli

NOUNS = ["meeting", "email", "monday", "rain", "dog", "movie", "party", "problem"]


def pairs(nouns):
    """Fixed prompt/response pairs: every reply opens "oh wonderful"."""
    return [[("user", f"what about the {noun} {when}"),
             ("assistant", f"oh wonderful, another {noun}. just what i needed")]
            for noun in nouns for when in ("today", "tomorrow", "tonight")]


@pytest.mark.parametrize("name, cls, attrs", [
    ("greedy", "GreedySampler", {"temperature": 0.5}),
    ("top_k", "TopKSampler", {"k": 7, "temperature": 0.5}),
    ("top_p", "TopPSampler", {"p": 0.8, "k": 7, "temperature": 0.5}),
    ("beam", "BeamSampler", {"num_beams": 3, "temperature": 0.5}),
])
def test_make_sampler(name, cls, attrs):
    sampler = make_sampler(name, temperature=0.5, top_k=7, top_p=0.8, num_beams=3, seed=1)
    assert type(sampler).__name__ == cls
    assert {k: getattr(sampler, k) for k in attrs} == attrs


@pytest.mark.parametrize("kwargs, fragment", [
    ({"name": "nucleus"}, "sampler 'nucleus'"),
    ({"temperature": 0.0}, "temperature=0.0"),
    ({"top_p": 1.5}, "top_p=1.5"),
])
def test_make_sampler_rejects_bad_settings(kwargs, fragment):
    with pytest.raises(KerastuneError, match=fragment):
        make_sampler(**kwargs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny GPT-2 tuned on `pairs`, saved as a chat run directory."""
    import keras
    import keras_hub

    from kerastune_lab.evaluate import perplexity
    from kerastune_lab.models import detached_preprocessor

    keras.utils.set_random_seed(0)
    model = keras_hub.models.CausalLM.from_preset(testing.tiny_preset("gpt2"))
    template = chat.ChatTemplate(model.preprocessor.tokenizer)
    train = chat.pack_conversations(pairs(NOUNS[:6]), template, sequence_length=48)
    heldout = chat.model_inputs(chat.pack_conversations(pairs(NOUNS[6:]), template, 48, pack=False))
    before = perplexity(model, *heldout)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True, reduction="mean_with_sample_weight"))
    with detached_preprocessor(model):
        model.fit(chat.chat_dataset(train, 6, shuffle=True, seed=0), epochs=15, verbose=0)
    after = perplexity(model, *heldout)
    run = RunDir.create(tmp_path_factory.mktemp("runs") / "chat")
    run.write_json("config.json", {"recipe": "test"})
    run.write_json(CHAT_FILE, chat_settings(template))
    run.save_model(model)
    return model, template, run, before, after


def test_tiny_model_learns_the_pairs(trained):
    model, template, _, before, after = trained
    assert after < before / 10, (before, after)
    replies = ChatGenerator(model, template, "greedy", max_length=40).replies(
        ["what about the cat today", "what about the car tonight"])
    assert all(reply.startswith("o") and "wonder" in reply for reply in replies), replies


def test_chat_answers_through_a_pipe(trained):
    model, template, run, _, _ = trained
    prompts = ["what about the cat today", "", "what about the car tonight"]
    result = run_cli("chat", run.path, "--sampler", "greedy", "--max-length", "40",
                     input="\n".join(prompts) + "\n")
    assert result.code == 0, result
    lines = result.stdout.split("\n")
    assert lines[-1] == "" and len(lines) == len(prompts) + 1, result.stdout
    expected = ChatGenerator(model, template, "greedy", max_length=40).replies(prompts[::2])
    assert lines[:3] == [" ".join(expected[0].split()), "", " ".join(expected[1].split())]
    assert "wonder" in lines[0] and "wonder" in lines[2]


def test_chat_needs_a_chat_run(cli, tmp_path, trained):
    run = RunDir.create(tmp_path / "notchat")
    run.write_json("config.json", {"recipe": "cats_vs_dogs"})
    assert_one_line_error(cli("chat", run.path), "notchat", "has no chat.json")
    assert_one_line_error(cli("chat", tmp_path / "nowhere"), "run dir", "does not exist")
    _, _, chat_run, _, _ = trained
    assert_one_line_error(cli("chat", chat_run.path, "--max-length", "4000"),
                          "max_length=4000", "at most 256")
