"""The "toyworld" dataset registered in the data registry."""

import json

import pytest
import torch

from cgrpo.config import ConfigError
from cgrpo.data import Example, build_dataset
from cgrpo.world import Scene


def test_toyworld_examples_are_deterministic_and_json_safe():
    ds = build_dataset("toyworld", {"num_examples": 16, "property_fraction": 0.5}, "train")
    again = build_dataset("toyworld", {"num_examples": 16, "property_fraction": 0.5}, "train")
    assert len(ds) == 16
    train = {i.key for i in ds.world.identities("train")}
    for i in range(len(ds)):
        ex, ex2 = ds[i], again[i]
        assert isinstance(ex, Example) and ex.prompt == ex2.prompt and ex.key == ex2.key
        assert torch.equal(ex.references, ex2.references)
        assert ex.references.shape == (1, 3, 32, 32) and ex.reference_masks.shape == (1, 1, 32, 32)
        assert ex.reference_masks.sum() > 0
        assert ex.metadata["identity"] in train
        assert ex.metadata["requested"] == ds.world.requested(ex.prompt)
        json.dumps(ex.metadata)
    assert {ds[i].metadata["kind"] for i in range(16)} == {"recontext", "property"}
    scene = Scene.from_dict(ds[3].metadata["scene"])
    assert scene == ds.scene(3)[1]
    tgt = ds.target(3)
    assert tgt.prompt == ds[3].prompt and tgt.identity.key == ds[3].metadata["identity"]


def test_toyworld_splits_and_options():
    held = build_dataset("toyworld", {"num_examples": 8, "kinds": ["property"]}, "eval")
    held_keys = {i.key for i in held.world.identities("heldout")}
    assert all(held[i].metadata["identity"] in held_keys for i in range(8))
    assert all(held[i].metadata["kind"] == "property" for i in range(8))
    bench = build_dataset("toyworld", {"source": "toybench", "size": 64}, "heldout")
    assert len(bench) == len(held_keys) * 25 and bench[0].references.shape[-1] == 64
    with pytest.raises(ConfigError, match="data.options.property_fraction"):
        build_dataset("toyworld", {"property_fraction": 1.5}, "train")
    with pytest.raises(ConfigError, match="data.options.kinds"):
        build_dataset("toyworld", {"kinds": []}, "train")
    with pytest.raises(ValueError, match="split"):
        build_dataset("toyworld", {}, "validation")
    with pytest.raises(IndexError):
        held[8]
