"""`cgrpo sample`: PNGs from a trained run or the base model; clear errors on bad input."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cgrpo.cli import main
from cgrpo.training import Trainer


def _reference(path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    return path


def test_sample_from_a_run_and_from_the_base(tiny_config, tiny_overrides, tmp_path, capsys):
    Trainer(tiny_config("train.steps=1"), tmp_path / "run").train()
    ref = _reference(tmp_path / "ref.png")
    out = tmp_path / "out"
    code = main(
        [
            "sample",
            "--run",
            str(tmp_path / "run"),
            "--reference",
            str(ref),
            "--prompt",
            "a mug in the snow",
            "--prompt",
            "a red mug",
            "--num-images",
            "2",
            "--num-steps",
            "3",
            "--seed",
            "5",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    files = sorted(out.glob("*.png"))
    assert len(files) == 4
    assert Image.open(files[0]).size == (32, 32)
    printed = capsys.readouterr().out.split()
    assert sorted(printed) == sorted(str(f) for f in files)

    # same seed, base model via --config: deterministic and different from the adapter's
    base = tmp_path / "base"
    args = [
        "sample",
        "--reference",
        str(ref),
        "--prompt",
        "a mug in the snow",
        "--num-steps",
        "3",
        "--seed",
        "5",
    ]
    (tmp_path / "tiny.yaml").write_text("{}\n")
    for folder in (base, tmp_path / "base2"):
        assert (
            main(
                [
                    *args,
                    "--config",
                    str(tmp_path / "tiny.yaml"),
                    "--out",
                    str(folder),
                    *tiny_overrides,
                ]
            )
            == 0
        )
    a = np.asarray(Image.open(next(base.glob("*.png"))))
    b = np.asarray(Image.open(next((tmp_path / "base2").glob("*.png"))))
    assert np.array_equal(a, b)


def test_corrupt_reference_is_named(tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    code = main(["sample", "--config", "x.yaml", "--reference", str(bad), "--prompt", "a mug"])
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "not a readable image" in err
