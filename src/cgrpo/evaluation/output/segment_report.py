"""``cgrpo segments``: write out what ``dino-seg`` compared, to check it by eye.

Items come from an evaluation folder (``cgrpo eval`` output, or a run's
``heldout/<phase>``: generated image, prompt, reference files, class noun from
``pairs.jsonl``) or from a config's dataset (references only). Each goes through
:class:`~cgrpo.rewards.segmentation.subject.SubjectIsolation` with the reward's options,
exactly as the reward sees it. Written under ``--out``::

    segments.jsonl                  one line per item: key, prompt, noun, per image its
                                    source (cut-out <path>, mask from data, segmenter <name>,
                                    raw) and mask area (fraction of the image)
    items/<NNN>_<key>/generated.png, generated_mask.png, reference_<j>.png,
                      reference_<j>_mask.png      as compared (masks where there are any)
    overlay.png                     one row per item: each image with its background tinted
                                    red (or as given), next to what was compared
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cgrpo.config import ConfigError, parse
from cgrpo.rewards.base import RewardFailure
from cgrpo.rewards.images import encode_png, to_uint8_array
from cgrpo.rewards.segmentation.segment import SegmenterOptions
from cgrpo.rewards.segmentation.subject import SubjectIsolation

TINT = (1.0, 0.15, 0.15)
GRID_FILE, RECORDS_FILE, ITEMS_DIR = "overlay.png", "segments.jsonl", "items"


@dataclass
class SegmentItem:
    """One sample to inspect.

    Attributes:
        key: its id (folder names, labels).
        prompt: the prompt.
        references: ``[R, 3, h, w]`` float in [0, 1].
        reference_masks: ``[R, 1, h, w]`` from the data, or None.
        metadata: what the reward sees (``reference_paths``, ``class_noun`` / ``category``).
        image: the generated image ``[3, H, W]``, or None (references only).
        image_path: where the generated image was read from.
    """

    key: str
    prompt: str
    references: torch.Tensor
    reference_masks: torch.Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    image: torch.Tensor | None = None
    image_path: str = ""


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    size = tuple(images[0].shape[-2:])
    return torch.stack(
        [
            im
            if tuple(im.shape[-2:]) == size
            else F.interpolate(im[None], size=size, mode="bilinear", antialias=True)[0]
            for im in images
        ]
    )


def items_from_evaluation(folder: str | Path, count: int) -> list[SegmentItem]:
    """The first ``count`` records of an evaluation folder (``pairs.jsonl``) as items.

    References are the record's files (``reference``: paths joined by ``;``); where the
    record names none, the folder's saved ``references/<subject>.png`` (a copy: no cut-out
    can be found beside it).
    """
    from cgrpo.data.base import load_image
    from cgrpo.evaluation.results import read_records, resolve_image
    from cgrpo.evaluation.resumable import REFERENCES_DIR

    folder = Path(folder)
    items = []
    for record in read_records(folder)[:count]:
        paths = [p for p in str(record.get("reference") or "").split(";") if Path(p).is_file()]
        metadata = dict(record.get("info") or {})
        if paths:
            metadata["reference_paths"] = paths
        else:
            saved = folder / REFERENCES_DIR / f"{record['subject']}.png"
            if not saved.is_file():
                raise FileNotFoundError(
                    f"{folder}: record {record['key']!r} names no readable reference file "
                    f"and {saved} does not exist"
                )
            paths = [str(saved)]
        image_path = resolve_image(folder, record["image"])
        items.append(
            SegmentItem(
                key=f"{record['key']}#{record.get('seed', 0)}",
                prompt=record["prompt"],
                references=_stack([load_image(p, "reference image") for p in paths]),
                metadata=metadata,
                image=load_image(image_path, "generated image"),
                image_path=str(image_path),
            )
        )
    return items


def items_from_dataset(dataset: Any, count: int) -> list[SegmentItem]:
    """The first ``count`` examples of a dataset (references only)."""
    items = []
    for i in range(min(count, len(dataset))):
        ex = dataset[i]
        items.append(
            SegmentItem(
                ex.key or f"item/{i}", ex.prompt, ex.references, ex.reference_masks, ex.metadata
            )
        )
    return items


# ---------------------------------------------------------------- pictures


def tint_background(image: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``[3, H, W]`` with pixels outside ``mask`` (``[1, h, w]``) blended towards red."""
    if mask is None:
        return image
    m = F.interpolate(mask[None].float(), size=tuple(image.shape[-2:]), mode="nearest")[0]
    tint = torch.tensor(TINT, device=image.device).view(3, 1, 1)
    return image * m + (0.4 * image + 0.6 * tint) * (1 - m)


def mask_area(mask: torch.Tensor | None) -> float | None:
    """Fraction of the image that is subject (None: no mask)."""
    return None if mask is None else round(float(mask.float().mean()), 4)


def tile_grid(
    rows: Sequence[tuple[str, Sequence[tuple[torch.Tensor, str]]]], tile: int = 192
) -> Any:
    """A PIL image: per row a title line, then ``(image, caption)`` tiles fitted in squares."""
    from PIL import Image, ImageDraw

    pad, line = 6, 13
    columns = max(len(tiles) for _, tiles in rows)
    row_h = line + tile + 2 * line + pad
    grid = Image.new("RGB", (pad + columns * (tile + pad), pad + len(rows) * row_h), "white")
    draw = ImageDraw.Draw(grid)
    for r, (title, tiles) in enumerate(rows):
        y = pad + r * row_h
        draw.text((pad, y), title[: columns * tile // 6], fill="black")
        for c, (image, caption) in enumerate(tiles):
            pil = Image.fromarray(to_uint8_array(image))
            scale = tile / max(pil.size)  # small images grow (nearest: pixels stay visible)
            method = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
            pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), method)
            x = pad + c * (tile + pad)
            grid.paste(pil, (x + (tile - pil.width) // 2, y + line + (tile - pil.height) // 2))
            for k in range(2):
                text = caption[k * (tile // 6) : (k + 1) * (tile // 6)]
                draw.text((x, y + line + tile + 1 + k * line), text, fill="#333333")
    return grid


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:60]


def _save(folder: Path, name: str, image: torch.Tensor, mask: torch.Tensor | None) -> None:
    (folder / f"{name}.png").write_bytes(encode_png(image))
    if mask is not None:
        (folder / f"{name}_mask.png").write_bytes(encode_png(mask.float()))


def write_segments(
    items: Sequence[SegmentItem], isolation: SubjectIsolation, out: str | Path, tile: int = 192
) -> list[dict[str, Any]]:
    """Segment ``items`` as the reward does and write the files of the module docstring.

    Returns the records written to ``segments.jsonl``.
    """
    out = Path(out)
    records, rows = [], []
    for n, item in enumerate(items):
        folder = out / ITEMS_DIR / f"{n:03d}_{_safe(item.key)}"
        folder.mkdir(parents=True, exist_ok=True)
        noun = isolation.noun(item.metadata)
        record: dict[str, Any] = {
            "key": item.key,
            "prompt": item.prompt,
            "noun": noun,
            "folder": str(folder.relative_to(out)),
        }
        tiles: list[tuple[torch.Tensor, str]] = []

        if item.image is not None:
            (shown,), (mask,) = isolation.images_as_compared(item.image[None], [noun])
            _save(folder, "generated", shown, mask)
            source = "raw" if mask is None else f"segmenter {isolation.options.segmenter}"
            record["generated"] = {
                "path": item.image_path,
                "source": source,
                "mask_area": mask_area(mask),
            }
            tiles += [(tint_background(item.image, mask), "generated"), (shown, source)]
        refs, masks, sources = isolation.references_as_compared(
            item.references, item.reference_masks, item.metadata, noun
        )
        record["references"] = []
        for j, (ref, mask, source) in enumerate(zip(refs, masks, sources)):
            _save(folder, f"reference_{j}", ref, mask)
            record["references"].append({"source": source, "mask_area": mask_area(mask)})
            original = item.references[j].to(ref.device)
            tiles += [(tint_background(original, mask), f"reference {j}"), (ref, source)]
        records.append(record)
        rows.append((f"{item.key} | {noun or 'no noun'} | {item.prompt}", tiles))
    out.mkdir(parents=True, exist_ok=True)
    (out / RECORDS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    if rows:
        tile_grid(rows, tile).save(out / GRID_FILE)
    return records


# ---------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--eval",
        type=Path,
        metavar="DIR",
        help="an evaluation folder (cgrpo eval --out, or a run's heldout/<phase>)",
    )
    src.add_argument(
        "--config", type=Path, help="a training config or a run's config.yaml (its data)"
    )
    p.add_argument(
        "--out", type=Path, required=True, help="output folder: items/, segments.jsonl, overlay.png"
    )
    p.add_argument(
        "--options",
        type=Path,
        help="YAML of the reward's options (a --metric-options file works); default: the "
        "config's reward entry, else the reward's defaults",
    )
    p.add_argument("--reward", default="dino-seg", help="the reward entry to read (dino-seg)")
    p.add_argument("--split", default="train", help="dataset split with --config (train)")
    p.add_argument("--count", type=int, default=16, help="items to write (16)")
    p.add_argument("--device", default="cpu", help="where segmenters run (cpu)")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value (with --config)")


def _reward_options(args: argparse.Namespace, config: Any) -> dict[str, Any]:
    import yaml

    if args.options is not None:
        if not args.options.is_file():
            raise ConfigError("--options", str(args.options), "file not found")
        data = yaml.safe_load(args.options.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError("--options", str(args.options), "must be a YAML mapping")
        entry = data.get(args.reward)
        return dict(entry) if isinstance(entry, dict) else data
    if config is None:
        return {}
    for spec in config.rewards:
        if spec.name == args.reward:
            return dict(spec.options)
    raise ConfigError(
        "--reward", args.reward, f"no such reward in {args.config}; give --options instead"
    )


def run(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise ConfigError("--count", args.count, "must be >= 1")
    config = None
    if args.config is not None:
        from cgrpo.config.train import load_config

        config = load_config(args.config, args.overrides)
    elif args.overrides:
        raise ConfigError("overrides", " ".join(args.overrides), "only apply with --config")
    options = _reward_options(args, config)
    # The reward's own options (model path, batch size) do not concern segmentation.
    wanted = {f.name for f in dataclasses.fields(SegmenterOptions)}
    prefix = f"rewards.{args.reward}.options"
    seg = parse(SegmenterOptions, {k: v for k, v in options.items() if k in wanted}, prefix)
    if config is not None:
        from cgrpo.data.base import build_dataset

        dataset = build_dataset(config.data.name, config.data.options, args.split)
        items = items_from_dataset(dataset, args.count)
    else:
        items = items_from_evaluation(args.eval, args.count)
    isolation = SubjectIsolation(seg, args.reward, prefix).to(args.device)
    try:
        records = write_segments(items, isolation, args.out)
    except RewardFailure as e:  # e.g. grounded-sam without a class noun: a setup problem here
        raise ValueError(str(e)) from None
    sources = Counter(r["source"].split()[0] for rec in records for r in rec["references"])
    summary = ", ".join(f"{n} {s}" for s, n in sorted(sources.items()))
    print(f"{len(records)} items ({summary} references) -> {args.out / GRID_FILE}")
    return 0


__all__ = [
    "SegmentItem",
    "add_arguments",
    "items_from_dataset",
    "items_from_evaluation",
    "run",
    "tint_background",
    "tile_grid",
    "write_segments",
]
