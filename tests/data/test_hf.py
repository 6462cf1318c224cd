"""data.name hf: datasets saved with save_to_disk, Parquet folders and files, built in the test."""

from __future__ import annotations

import io
import logging
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from cgrpo.config import ConfigError
from cgrpo.data import build_dataset
from cgrpo.extras import MissingExtra

datasets = pytest.importorskip("datasets")


def _pil(value: int, size=(12, 10)) -> Image.Image:
    return Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8))


def _mask(size=(12, 10)) -> Image.Image:
    arr = np.zeros((size[1], size[0]), dtype=np.uint8)
    arr[:, : size[0] // 2] = 255
    return Image.fromarray(arr, mode="L")


def _syncd_like(rows: int = 3) -> datasets.Dataset:
    """SynCD's field names: text, ref_img (a list of images), category, id; plus extras."""
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "text": datasets.Value("string"),
            "ref_img": datasets.List(datasets.Image()),
            "category": datasets.Value("string"),
            "score": datasets.Value("float32"),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "id": [f"pair-{i}" for i in range(rows)],
            "text": [f"a photo number {i}" for i in range(rows)],
            "ref_img": [[_pil(40 * i), _pil(255, size=(6, 4))] for i in range(rows)],
            "category": ["dog", "cat", "can"][:rows],
            "score": [0.5] * rows,
        },
        features=features,
    )


def test_save_to_disk_with_syncd_names_needs_no_mapping(tmp_path):
    _syncd_like().save_to_disk(str(tmp_path / "ds"))
    ds = build_dataset("hf", {"path": str(tmp_path / "ds")})
    assert len(ds) == 3
    ex = ds[1]
    assert ex.prompt == "a photo number 1" and ex.key == "pair-1"
    # two references, the second resized to the first's size; pixel values exact
    assert ex.references.shape == (2, 3, 10, 12)
    assert torch.allclose(ex.references[0], torch.full((3, 10, 12), 40 / 255))
    assert torch.allclose(ex.references[1], torch.ones(3, 10, 12), atol=1e-6)
    assert ex.reference_masks is None
    assert ex.metadata["subject"] == ex.metadata["category"] == "cat"
    assert ex.metadata["score"] == pytest.approx(0.5)
    assert "ref_img" not in ex.metadata and "reference_paths" not in ex.metadata


def test_column_mapping_masks_parquet_folder_and_heldout_split(tmp_path):
    features = datasets.Features(
        {
            "caption_en": datasets.Value("string"),
            "subject_photo": datasets.Image(),
            "subject_mask": datasets.Image(),
            "name": datasets.Value("string"),
        }
    )
    rows = {
        "caption_en": ["red mug on a table", "blue mug in snow", "green mug at sea"],
        "subject_photo": [_pil(10), _pil(20, size=(24, 20)), _pil(30)],
        "subject_mask": [_mask(), _mask(), _mask()],
        "name": ["mug"] * 3,
    }
    folder = tmp_path / "pq"
    ds = datasets.Dataset.from_dict(rows, features=features)
    ds.select([0, 1]).to_parquet(str(folder / "a.parquet"))
    ds.select([2]).to_parquet(str(folder / "b.parquet"))
    options = {
        "path": str(folder),
        "columns": {
            "prompt": "caption_en",
            "references": "subject_photo",
            "masks": "subject_mask",
            "subject": "name",
        },
        "heldout_count": 1,
    }
    train = build_dataset("hf", options, "train")
    held = build_dataset("hf", options, "heldout")
    assert [train[i].prompt for i in range(len(train))] == rows["caption_en"][:2]
    assert [held[0].prompt] == rows["caption_en"][2:]
    ex = train[1]
    assert ex.references.shape == (1, 3, 20, 24)
    mask = ex.reference_masks
    assert mask.shape == (1, 1, 20, 24)  # the 12x10 mask resized to the reference
    assert mask[0, 0, :, :12].eq(1).all() and mask[0, 0, :, 12:].eq(0).all()
    assert ex.key == "pq/1" and ex.metadata["category"] == "mug"


def test_path_cells_resolve_against_the_dataset_and_keep_reference_paths(tmp_path):
    (tmp_path / "imgs").mkdir()
    _pil(200).save(tmp_path / "imgs" / "a.png")
    table = datasets.Dataset.from_dict(
        {"prompt": ["a toy", "a toy again"], "image": ["imgs/a.png", "imgs/missing.png"]}
    )
    table.to_parquet(str(tmp_path / "one.parquet"))
    with pytest.raises(ValueError, match=r"row 1: reference 0 not found: .*missing.png"):
        build_dataset("hf", {"path": str(tmp_path / "one.parquet")})
    ds = build_dataset("hf", {"path": str(tmp_path / "one.parquet"), "on_error": "skip"})
    assert len(ds) == 1 and ds.skipped == 1
    ex = ds[0]
    assert ex.metadata["reference_paths"] == [str(tmp_path / "imgs" / "a.png")]
    assert torch.allclose(ex.references, torch.full((1, 3, 10, 12), 200 / 255))


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` (the limit is checked before decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_bad_rows_follow_the_file_rules(tmp_path, caplog):
    buf = io.BytesIO()
    _pil(90).save(buf, format="PNG")
    good = buf.getvalue()
    ds = datasets.Dataset.from_dict(
        {
            "prompt": ["fine", "  ", "not an image", "huge", "no reference", "fine too"],
            "image": [good, good, b"garbage", _bomb_png(9000, 9000), None, good],
        }
    )
    ds.save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(ValueError, match=r"row 1: empty prompt"):
        build_dataset("hf", {"path": str(tmp_path / "ds")})
    with caplog.at_level(logging.WARNING):
        skip = build_dataset("hf", {"path": str(tmp_path / "ds"), "on_error": "skip"})
    assert len(skip) == 4 and skip.skipped == 2  # rows 1 and 4 at build time
    assert "row 4: no reference image" in " ".join(skip.problems)
    # rows 2 and 3 fail when loaded (the image reader, its pixel limit): the next good row
    assert skip[1].prompt == "fine too" and skip[2].prompt == "fine too"
    assert skip.skipped == 4
    assert any("over the limit" in p for p in skip.problems)
    assert any("not a readable image" in p for p in skip.problems)


def test_dataset_dict_splits_and_config_errors(tmp_path):
    dd = datasets.DatasetDict({"train": _syncd_like(2), "validation": _syncd_like(1)})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert len(build_dataset("hf", {"path": str(tmp_path / "dd")})) == 2
    assert (
        len(build_dataset("hf", {"path": str(tmp_path / "dd"), "dataset_split": "validation"})) == 1
    )
    with pytest.raises(
        ConfigError, match=r"data.options.dataset_split = 'test': choose one of train, validation"
    ):
        build_dataset("hf", {"path": str(tmp_path / "dd"), "dataset_split": "test"})
    with pytest.raises(
        ConfigError, match=r"data.options.columns.prompt = 'caption': no such column"
    ):
        build_dataset("hf", {"path": str(tmp_path / "dd"), "columns": {"prompt": "caption"}})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"data.options.path = .*neither a save_to_disk"):
        build_dataset("hf", {"path": str(tmp_path / "empty")})
    with pytest.raises(ConfigError, match=r"data.options.path = .*not found"):
        build_dataset("hf", {"path": str(tmp_path / "nowhere")})
    datasets.Dataset.from_dict({"words": ["x"], "image": [None]}).to_parquet(
        str(tmp_path / "x.parquet")
    )
    with pytest.raises(
        ConfigError, match=r"data.options.columns.prompt = None: none of prompt, text, caption"
    ):
        build_dataset("hf", {"path": str(tmp_path / "x.parquet")})


def test_missing_extra_is_one_line_naming_it(tmp_path, monkeypatch):
    _syncd_like(1).save_to_disk(str(tmp_path / "ds"))
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)
    with pytest.raises(
        MissingExtra, match=r"data.name hf needs the optional extra 'hf'.*cgrpo\[hf\]"
    ):
        build_dataset("hf", {"path": str(tmp_path / "ds")})


def test_an_hf_dataset_trains(tmp_path):
    """The trainer takes an hf dataset as it takes any other (one step of the pocket model)."""
    from cgrpo.config.train import load_config
    from cgrpo.evaluation.output.plots import to_pil
    from cgrpo.training import Trainer

    # toy-world items (the default rewards read their prompts), as a hub dataset would hold them
    world = build_dataset("toyworld", {}, "train")
    items = [world[i] for i in range(2)]
    datasets.Dataset.from_dict(
        {
            "prompt": [e.prompt for e in items],
            "image": [to_pil(e.references[0]) for e in items],
        },
        features=datasets.Features({"prompt": datasets.Value("string"), "image": datasets.Image()}),
    ).save_to_disk(str(tmp_path / "ds"))
    config = load_config(
        None,
        [
            "data.name=hf",
            f"data.options.path={tmp_path / 'ds'}",
            "train.steps=1",
            "sampling.group_size=2",
            "sampling.groups_per_step=1",
            "sampling.num_steps=3",
            "eval.before_after=false",
            "logging.tensorboard=false",
            "logging.progress=false",
            "logging.sample_every=0",
        ],
    )
    trainer = Trainer(config, tmp_path / "run")
    summary = trainer.train()
    assert (tmp_path / "run" / "final" / "adapter.safetensors").is_file()
    assert np.isfinite(summary["last_metrics"]["loss"])
