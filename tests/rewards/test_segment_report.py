"""cgrpo segments: what dino-seg compared, written out with an overlay grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cgrpo.cli import main


def save_png(path, image: torch.Tensor):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(path)
    return path


def read_png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int32)


def red_square(h=48, w=64) -> torch.Tensor:
    img = torch.full((3, h, w), 0.9)
    img[:, 12:36, 20:44] = torch.tensor([0.8, 0.1, 0.1]).view(3, 1, 1)
    return img


@pytest.fixture
def evaluation(tmp_path, make_images):
    """An evaluation folder: two records, one reference with a <ref>_seg.png cut-out."""
    data, folder = tmp_path / "data", tmp_path / "eval"
    refs = make_images(2, 40, 50, seed=40)
    dog = save_png(data / "dog" / "00.jpg.png", refs[0])
    save_png(data / "dog" / "00.jpg_seg.png", torch.ones(3, 30, 30) * 0.2)
    cat = save_png(data / "cat" / "01.png", refs[1])
    gen = make_images(2, 56, 56, seed=41)
    lines = []
    for i, (subject, ref) in enumerate([("dog", dog), ("cat", cat)]):
        save_png(folder / "images" / subject / "00_0.png", gen[i])
        lines.append(
            {
                "key": f"{subject}/00",
                "seed": 0,
                "subject": subject,
                "prompt_index": 0,
                "prompt": f"a {subject} in the jungle",
                "kind": "recontextualization",
                "image": f"images/{subject}/00_0.png",
                "reference": str(ref),
                "info": {"class_noun": subject},
                "scores": {},
            }
        )
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder, gen


def test_segments_of_an_evaluation_precomputed(evaluation, tmp_path, capsys):
    folder, gen = evaluation
    out = tmp_path / "seg"
    assert main(["segments", "--eval", str(folder), "--out", str(out)]) == 0
    records = [json.loads(x) for x in (out / "segments.jsonl").read_text().splitlines()]
    assert [r["key"] for r in records] == ["dog/00#0", "cat/00#0"]
    dog, cat = records
    assert dog["noun"] == "dog" and dog["generated"]["source"] == "raw"
    assert (
        dog["references"][0]["source"].startswith("cut-out ")
        and "00.jpg_seg.png" in (dog["references"][0]["source"])
    )
    assert cat["references"] == [{"source": "raw", "mask_area": None}]
    item = out / dog["folder"]
    assert sorted(p.name for p in item.iterdir()) == ["generated.png", "reference_0.png"]
    # precomputed: the generated image is compared whole; the reference is the cut-out
    assert (
        np.abs(read_png(item / "generated.png") - read_png(folder / "images/dog/00_0.png")).max()
        == 0
    )
    assert read_png(item / "reference_0.png").shape == (30, 30, 3)
    grid = Image.open(out / "overlay.png")
    assert grid.height > 2 * 192 and grid.width > 4 * 192  # 2 rows x 4 tiles
    assert "2 items (1 cut-out, 1 raw references)" in capsys.readouterr().out


def test_segments_of_a_config_dataset_with_a_segmenter(tmp_path):
    save_png(tmp_path / "a.png", red_square())
    (tmp_path / "d.jsonl").write_text(json.dumps({"prompt": "a toy", "references": ["a.png"]}))
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"name": "jsonl", "options": {"path": str(tmp_path / "d.jsonl")}},
                "rewards": [
                    {"name": "toy-prompt", "role": "prompt"},
                    {
                        "name": "dino-seg",
                        "role": "identity",
                        "options": {"path": "/models/dino", "segmenter": "background-difference"},
                    },
                ],
            }
        )
    )
    out = tmp_path / "seg"
    assert main(["segments", "--config", str(config), "--out", str(out)]) == 0
    (record,) = [json.loads(x) for x in (out / "segments.jsonl").read_text().splitlines()]
    (ref,) = record["references"]
    assert ref["source"] == "segmenter background-difference" and "generated" not in record
    assert ref["mask_area"] == pytest.approx(24 * 24 / (48 * 64), abs=0.02)
    mask = read_png(out / record["folder"] / "reference_0_mask.png")[..., 0]
    assert mask[24, 32] == 255 and mask[2, 2] == 0
    grid = read_png(out / "overlay.png")
    # The first tile (64x48 shown at 192x144, 24 px down) tints the background red and
    # leaves the subject as it is; the second shows what was compared (white fill).
    top, left = 6 + 13 + 24, 6
    corner, centre = grid[top + 3, left + 3], grid[top + 72, left + 96]
    assert corner[0] > corner[1] + 60 and abs(centre - [204, 25, 25]).max() <= 1
    compared = grid[top + 3, left + 192 + 6 + 3]
    assert (compared == 255).all()


def test_segments_errors_are_one_line(evaluation, tmp_path, capsys):
    folder, _ = evaluation
    config = tmp_path / "c.yaml"
    rewards = [{"name": "toy-id", "role": "identity"}, {"name": "toy-prompt", "role": "prompt"}]
    config.write_text(yaml.safe_dump({"rewards": rewards}))
    assert main(["segments", "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    assert "--reward = 'dino-seg': no such reward" in capsys.readouterr().err
    opts = tmp_path / "metrics.yaml"
    opts.write_text(yaml.safe_dump({"dino-seg": {"segmenter": "magic"}}))
    code = main(
        ["segments", "--eval", str(folder), "--options", str(opts), "--out", str(tmp_path / "o")]
    )
    assert code == 2
    assert "rewards.dino-seg.options.segmenter = 'magic'" in capsys.readouterr().err
    (folder / "pairs.jsonl").write_text(
        (folder / "pairs.jsonl").read_text().replace(str(tmp_path / "data"), "/gone")
    )
    assert main(["segments", "--eval", str(folder), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert "names no readable reference file" in err and len(err.splitlines()) == 1
