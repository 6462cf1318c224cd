"""The MiniLM prompt encoder: real weights, per-prompt cache, padding, pooling, disk cache."""

import pytest
import torch

from cgrpo.policies.text import HIDDEN_SIZE, MiniLMTextEncoder, load_minilm, mean_pool


@pytest.fixture(scope="module")
def encoder():
    return MiniLMTextEncoder(max_length=12)


def test_shapes_padding_and_pooling(encoder):
    out = encoder.encode(["a ball in the snow", "a big striped box on the beach in the center"])
    assert out.states.shape == (2, 12, HIDDEN_SIZE) and out.states.dtype == torch.float32
    assert out.mask.shape == (2, 12) and out.mask.dtype == torch.bool
    assert out.pooled.shape == (2, HIDDEN_SIZE)
    # [CLS] a ball in the snow [SEP] = 7 real tokens; the long prompt fills (truncates) all 12
    assert out.mask.sum(1).tolist() == [7, 12]
    assert torch.all(out.states[0, 7:] == 0)
    # pooled = unit-norm masked mean, as the sentence-transformers pipeline of this model
    expected = torch.nn.functional.normalize(mean_pool(out.states, out.mask), dim=-1)
    torch.testing.assert_close(out.pooled, expected)
    torch.testing.assert_close(out.pooled.norm(dim=-1), torch.ones(2))


def test_same_prompt_is_cached_and_identical(encoder):
    a = encoder.encode(["a red kite"])
    n = len(encoder)
    b = encoder.encode(["a red kite", "a red kite"])
    assert len(encoder) == n  # nothing new was encoded
    assert torch.equal(a.states[0], b.states[1]) and torch.equal(a.pooled[0], b.pooled[0])
    # a fresh encoder (shared model, empty cache) computes the same numbers
    fresh = MiniLMTextEncoder(max_length=12).encode(["a red kite"])
    torch.testing.assert_close(fresh.states, a.states)


def test_batch_composition_does_not_change_a_prompt(encoder):
    alone = MiniLMTextEncoder(max_length=12).encode(["a dotted vase"])
    mixed = MiniLMTextEncoder(max_length=12).encode(["a mug on the grass", "a dotted vase"])
    torch.testing.assert_close(alone.states[0], mixed.states[1], atol=1e-5, rtol=1e-5)


def test_different_prompts_differ_and_meaning_is_captured(encoder):
    out = encoder.encode(["a ball in the snow", "a ball on the beach", "a tent in the snow"])
    assert not torch.allclose(out.pooled[0], out.pooled[1])
    assert not torch.allclose(out.states[0], out.states[2])
    # real pretrained weights: a paraphrase is closer than an unrelated sentence
    para = encoder.encode(["a photo of a dog", "a picture of a puppy", "tax law reform bill"])
    sim = para.pooled @ para.pooled.T
    assert sim[0, 1] > sim[0, 2] + 0.2


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_prompt_is_an_error_naming_it(encoder, bad):
    with pytest.raises(ValueError, match=r"prompt 1 is empty"):
        encoder.encode(["a ball", bad])


def test_single_string_is_rejected(encoder):
    with pytest.raises(TypeError, match="list of prompts"):
        encoder.encode("a ball")


def test_model_is_loaded_once_and_frozen():
    tok_a, model_a = load_minilm()
    tok_b, model_b = load_minilm()
    assert model_a is model_b and tok_a is tok_b
    assert not model_a.training
    assert not any(p.requires_grad for p in model_a.parameters())


def test_disk_cache_round_trip(encoder, tmp_path):
    prompts = ["a checkered birdhouse in a kitchen", "a small donut"]
    before = encoder.encode(prompts)
    path = encoder.save_cache(tmp_path / "prompts.safetensors")
    loaded = MiniLMTextEncoder(max_length=12, cache_file=path)
    assert len(loaded) == len(encoder)
    after = loaded.encode(prompts)
    assert torch.equal(after.states, before.states) and torch.equal(after.mask, before.mask)
    assert torch.equal(after.pooled, before.pooled)
    with pytest.raises(ValueError, match="max_length=12"):
        MiniLMTextEncoder(max_length=16, cache_file=path)
