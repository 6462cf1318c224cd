"""The file datasets: SynCD-style JSON and JSON Lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cgrpo.config import ConfigError
from cgrpo.data import Example, build_dataset

DREAMBENCH = Path(__file__).resolve().parents[2].parent / "shared" / "dreambench"


def _png(path: Path, value: int, size=(12, 10), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(np.full(shape, value, dtype=np.uint8), mode=mode).save(path)
    return path


def _mask(path: Path, size=(12, 10)) -> Path:
    arr = np.zeros((size[1], size[0]), dtype=np.uint8)
    arr[:, : size[0] // 2] = 255  # left half is the subject
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="L").save(path)
    return path


def _syncd(tmp_path: Path, entries: list, **options):
    file = tmp_path / "pairs.json"
    file.write_text(json.dumps(entries))
    return build_dataset("syncd", {"path": str(file), **options}, "train")


def test_syncd_entries_become_examples_and_seg_files_are_not_masks(tmp_path):
    _png(tmp_path / "imgs" / "a.jpg", 255)
    _mask(tmp_path / "imgs" / "a_seg.png")
    _png(tmp_path / "imgs" / "b.png", 0, size=(8, 8))
    _png(tmp_path / "imgs" / "c.png", 128, size=(6, 4))
    (tmp_path / "emb").mkdir()
    (tmp_path / "emb" / "0.safetensors").write_bytes(b"x")
    entries = [
        {
            "ref_img": "imgs/a.jpg",
            "img": "imgs/target.jpg",
            "text": " a dog on grass ",
            "category": "dog",
            "dino": "emb/0.safetensors",
            "id": "pair-0",
        },
        {
            "ref_img": ["imgs/b.png", "imgs/c.png"],
            "text": "a cat",
            "category": "cat",
            "dino": "emb/0.safetensors",
        },
    ]
    data = _syncd(tmp_path, entries, embedding_keys=["dino"])
    assert len(data) == 2 and data.skipped == 0
    first = data[0]
    assert isinstance(first, Example)
    assert first.prompt == "a dog on grass" and first.key == "pair-0"
    assert first.references.shape == (1, 3, 10, 12) and torch.all(first.references == 1.0)
    # a_seg.png is the subject's cut-out (dino-seg reads it), never a mask
    assert first.reference_masks is None
    assert first.metadata["reference_paths"] == [str(tmp_path / "imgs" / "a.jpg")]
    assert first.metadata["category"] == "dog"
    assert first.metadata["target_image"] == str(tmp_path / "imgs" / "target.jpg")
    assert first.metadata["dino"] == str(tmp_path / "emb" / "0.safetensors")
    second = data[1]
    assert second.references.shape == (2, 3, 8, 8)  # the second reference takes the first's size
    assert second.reference_masks is None and second.key == "pairs/1"
    assert torch.allclose(second.references[1], torch.full((3, 8, 8), 128 / 255), atol=1e-3)


def test_syncd_reads_dreambench_images_with_a_root(tmp_path):
    if not (DREAMBENCH / "dog" / "00.jpg").is_file():
        pytest.skip("DreamBench not found beside the repository")
    entries = [
        {"ref_img": "dog/00.jpg", "text": "a dog in the snow", "category": "dog"},
        {"ref_img": "backpack/02.jpg", "text": "a backpack on the beach"},
    ]
    data = _syncd(tmp_path, entries, root=str(DREAMBENCH))
    ex = data[0]
    assert ex.references.shape[:2] == (1, 3) and max(ex.references.shape[-2:]) == 512
    assert 0.0 <= ex.references.min() and ex.references.max() <= 1.0 and ex.references.std() > 0.05
    assert data[1].metadata["reference_paths"] == [str(DREAMBENCH / "backpack" / "02.jpg")]


def test_bad_entries_stop_with_their_index_and_path(tmp_path):
    _png(tmp_path / "ok.png", 10)
    entries = [{"ref_img": "ok.png", "text": "fine"}, {"ref_img": "missing.png", "text": "x"}]
    with pytest.raises(ValueError, match=r"entry 1: reference 0 not found: .*missing\.png"):
        _syncd(tmp_path, entries)
    with pytest.raises(ValueError, match=r"entry 1: empty prompt"):
        _syncd(tmp_path, [entries[0], {"ref_img": "ok.png", "text": "  "}])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    data = _syncd(tmp_path, [entries[0], {"ref_img": "broken.png", "text": "y"}])
    with pytest.raises(ValueError, match=r"entry 1: .*broken\.png is not a readable image"):
        data[1]


def test_bad_entries_are_skipped_counted_and_logged_once(tmp_path, caplog):
    _png(tmp_path / "ok.png", 10)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "broken2.png").write_bytes(b"nor this")
    entries = [
        {"ref_img": "ok.png", "text": "good"},
        {"ref_img": "missing.png", "text": "x"},
        {"ref_img": "ok.png", "text": ""},
        {"ref_img": "broken.png", "text": "unreadable"},
        {"ref_img": "broken2.png", "text": "unreadable too"},
        "not an object",
    ]
    with caplog.at_level(logging.WARNING, logger="cgrpo.data.files"):
        data = _syncd(tmp_path, entries, on_error="skip")
        assert len(data) == 3 and data.skipped == 3
        assert len(caplog.records) == 3  # each bad entry once, with its path
        assert f"entry 1: reference 0 not found: {tmp_path / 'missing.png'}" in caplog.text
        assert data[1].prompt == "good"  # entry 3 is unreadable: the next good one (wrapping)
        assert data[2].prompt == "good"
        assert data[1].prompt == "good"  # a known-broken entry is not counted twice
    assert data.skipped == 5 and any("broken2.png" in p for p in data.problems)
    assert len(caplog.records) == 4  # three at build time, one at the first load failure


def test_jsonl_with_explicit_masks_metadata_and_line_numbers(tmp_path):
    _png(tmp_path / "r" / "x.png", 200)
    _mask(tmp_path / "m" / "x_mask.png")
    lines = [
        json.dumps(
            {
                "prompt": "a toy",
                "references": ["r/x.png"],
                "masks": ["m/x_mask.png"],
                "key": "toy-1",
                "metadata": {"class": "toy"},
                "source": "unit",
            }
        ),
        "",
        json.dumps({"prompt": "a toy again", "references": "r/x.png"}),
    ]
    file = tmp_path / "data.jsonl"
    file.write_text("\n".join(lines) + "\n")
    data = build_dataset("jsonl", {"path": str(file)}, "train")
    assert len(data) == 2
    ex = data[0]
    assert ex.key == "toy-1" and ex.metadata["class"] == "toy" and ex.metadata["source"] == "unit"
    assert ex.reference_masks.shape == (1, 1, 10, 12)
    assert data[1].key == "data/3" and data[1].reference_masks is None
    none = build_dataset("jsonl", {"path": str(file), "masks": "none"}, "train")
    assert none[0].reference_masks is None
    file.write_text(lines[0] + "\n{oops\n")
    with pytest.raises(ValueError, match=r"data\.jsonl line 2: not valid JSON"):
        build_dataset("jsonl", {"path": str(file)}, "train")
    assert len(build_dataset("jsonl", {"path": str(file), "on_error": "skip"}, "train")) == 1


def test_required_masks_and_mask_count_mismatch(tmp_path):
    _png(tmp_path / "a.png", 1)
    file = tmp_path / "d.jsonl"
    file.write_text(json.dumps({"prompt": "p", "references": ["a.png"]}) + "\n")
    _mask(tmp_path / "a_seg.png", size=(6, 5))  # a cut-out by convention: not a mask
    with pytest.raises(ValueError, match=r"line 1: the entry names no masks \(masks: required\)"):
        build_dataset("jsonl", {"path": str(file), "masks": "required"}, "train")
    file.write_text(json.dumps({"prompt": "p", "references": ["a.png"], "masks": "a_seg.png"}))
    ex = build_dataset("jsonl", {"path": str(file), "masks": "required"}, "train")[0]
    assert ex.reference_masks.shape == (1, 1, 10, 12)  # resized to the reference
    file.write_text(
        json.dumps({"prompt": "p", "references": ["a.png"], "masks": ["a_seg.png", "a_seg.png"]})
        + "\n"
    )
    with pytest.raises(ValueError, match="2 masks for 1 references"):
        build_dataset("jsonl", {"path": str(file)}, "train")


def test_heldout_split_and_option_errors(tmp_path):
    _png(tmp_path / "a.png", 1)
    entries = [{"ref_img": "a.png", "text": f"prompt {i}"} for i in range(4)]
    file = tmp_path / "pairs.json"
    file.write_text(json.dumps(entries))
    opts = {"path": str(file), "heldout_count": 1}
    train = build_dataset("syncd", opts, "train")
    held = build_dataset("syncd", opts, "heldout")
    assert [train[i].prompt for i in range(len(train))] == ["prompt 0", "prompt 1", "prompt 2"]
    assert len(held) == 1 and held[0].prompt == "prompt 3"
    assert len(build_dataset("syncd", {"path": str(file)}, "heldout")) == 4
    with pytest.raises(ValueError, match="no split 'val'"):
        build_dataset("syncd", {"path": str(file)}, "val")
    with pytest.raises(ConfigError, match=r"data\.options\.path"):
        build_dataset("syncd", {}, "train")
    with pytest.raises(ConfigError, match=r"data\.options\.path.*file not found"):
        build_dataset("jsonl", {"path": str(tmp_path / "none.jsonl")}, "train")
    with pytest.raises(ConfigError, match=r"data\.options\.on_error"):
        build_dataset("syncd", {"path": str(file), "on_error": "ignore"}, "train")
    with pytest.raises(ConfigError, match=r"data\.options\.heldout_count"):
        build_dataset("syncd", {"path": str(file), "heldout_count": 4}, "train")
