"""``cgrpo eval``'s on-disk evaluation: resumable generation and scoring into a folder.

Images go to ``<out>/images/<subject>/<prompt_index>_<seed>.png``, records to
``pairs.jsonl`` / ``pairs.csv`` (:mod:`cgrpo.evaluation.results`). A rerun skips images that
exist and scores only missing columns, so an interrupted evaluation resumes and adding a
metric later scores just that metric. Generation and scoring are the helpers of
:mod:`cgrpo.evaluation.harness` (same seeds, same 8-bit pixels as the in-memory path).
"""

from __future__ import annotations

import gc
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from cgrpo.evaluation.harness import (
    EvalItem,
    GenerateFn,
    base_record,
    generate_batches,
    image_relpath,
    progress_bar,
    save_png,
    score_batch,
)
from cgrpo.evaluation.results import ResultStore
from cgrpo.rewards.base import Reward
from cgrpo.rewards.images import to_uint8_array

REFERENCES_DIR = "references"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def save_references(items: Sequence[EvalItem], out_dir: str | Path, max_side: int = 256) -> None:
    """``<out>/references/<subject>.png``: each subject's first reference, for grids and reports.

    Reports then show references even when the dataset is elsewhere or procedural.
    """
    from PIL import Image

    seen: set[str] = set()
    for item in items:
        path = Path(out_dir) / REFERENCES_DIR / f"{item.subject}.png"
        if item.subject in seen or path.is_file():
            continue
        seen.add(item.subject)
        image = Image.fromarray(to_uint8_array(item.references[0]))
        if max(image.size) > max_side:
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)


def find_images(images_dir: str | Path, items: Sequence[EvalItem]) -> dict[tuple[str, int], Path]:
    """Images of another system laid out as ``<subject>/<prompt_index>_<seed>.<ext>``.

    ``prompt_index`` may be zero-padded or not. Returns ``{(item key, seed): path}``.
    Raises FileNotFoundError if the folder is missing or a pair has no image at all.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"--images folder not found: {images_dir}")
    by_pair = {(it.subject, it.prompt_index): it for it in items}
    found: dict[tuple[str, int], Path] = {}
    for path in sorted(images_dir.glob("*/*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        stem = path.stem.split("_")
        if len(stem) != 2 or not all(p.isdigit() for p in stem):
            continue
        item = by_pair.get((path.parent.name, int(stem[0])))
        if item is not None:
            found[(item.key, int(stem[1]))] = path
    have = {key for key, _ in found}
    missing = [it.key for it in items if it.key not in have]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(items)} pairs have no image in {images_dir} "
            f"(expected <subject>/<prompt_index>_<seed>.png), e.g. {', '.join(missing[:5])}"
        )
    return found


def _load_image(path: Path) -> torch.Tensor:
    from cgrpo.data.base import load_image

    return load_image(path, "generated image")


def generate_missing(
    policy_factory: Callable[[], Any],
    items: Sequence[EvalItem],
    seeds: int,
    out_dir: str | Path,
    *,
    base_seed: int = 0,
    shared_seed: bool = False,
    batch_size: int = 8,
    gen_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    generate_fn: GenerateFn | None = None,
) -> int:
    """Generate and save every ``(item, seed)`` image not yet in ``out_dir``; returns the count.

    The policy is built only when something is missing (a finished folder needs no model).
    """
    out_dir = Path(out_dir)
    todo = {
        s: [it for it in items if not (out_dir / image_relpath(it, s)).is_file()]
        for s in range(seeds)
    }
    total = sum(len(v) for v in todo.values())
    if total == 0:
        return 0
    policy = policy_factory()
    bar = progress_bar(total, "generate", progress)
    for s, pending in todo.items():
        for run, images in generate_batches(
            policy,
            pending,
            s,
            base_seed=base_seed,
            shared_seed=shared_seed,
            batch_size=batch_size,
            gen_kwargs=gen_kwargs,
            generate_fn=generate_fn,
        ):
            for item, image in zip(run, images):
                save_png(image, out_dir / image_relpath(item, s))
            bar.update(len(run))
    bar.close()
    del policy
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the reward models come next on the same device
    return total


def score_missing(
    store: ResultStore,
    jobs: Sequence[tuple[EvalItem, int, Path]],
    rewards: Sequence[Reward] | Callable[[], Sequence[Reward]],
    *,
    expected_columns: Sequence[str] | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> int:
    """Score the images of ``jobs`` ``(item, seed, image path)`` that lack a score column.

    ``rewards`` may be a callable that builds them; it is called only when some job lacks
    one of ``expected_columns`` (when those are not known, it is always called). So a
    finished folder loads no reward model. Records are saved after every batch.
    Returns the number of images scored.
    """
    for item, seed, path in jobs:  # bookkeeping fields follow the current benchmark
        old = store.get(item.key, seed)
        record = base_record(item, seed, _relative(path, store.directory))
        if old is not None:
            record["scores"] = old.get("scores", {})
        store.put(record)
    if callable(rewards):
        if expected_columns is not None and not any(
            store.missing_columns(it.key, s, expected_columns) for it, s, _ in jobs
        ):
            store.save()
            return 0
        rewards = list(rewards())
    built: list[Reward] = list(rewards)
    columns = [c for r in built for c in r.columns]
    pending = [job for job in jobs if store.missing_columns(job[0].key, job[1], columns)]
    if not pending:
        store.save()
        return 0
    bar = progress_bar(len(pending), "score", progress)

    def flush(group: list[tuple[EvalItem, int, torch.Tensor]]) -> None:
        needed = [
            r
            for r in built
            if any(store.missing_columns(it.key, s, r.columns) for it, s, _ in group)
        ]
        scores = score_batch(needed, [g[0] for g in group], torch.stack([g[2] for g in group]))
        for j, (item, seed, _) in enumerate(group):
            store.get(item.key, seed)["scores"].update({k: float(v[j]) for k, v in scores.items()})
        store.save()
        bar.update(len(group))

    # Stack only same-size images: generated ones share a size, other systems' may not.
    by_size: dict[tuple[int, int], list[tuple[EvalItem, int, torch.Tensor]]] = defaultdict(list)
    for item, seed, path in pending:
        image = _load_image(path)
        size = (int(image.shape[1]), int(image.shape[2]))
        by_size[size].append((item, seed, image))
        if len(by_size[size]) >= batch_size:
            flush(by_size.pop(size))
    for group in by_size.values():
        flush(group)
    bar.close()
    return len(pending)


def _relative(path: Path, directory: Path) -> str:
    try:
        return Path(os.path.relpath(path.resolve(), directory.resolve())).as_posix()
    except ValueError:  # different drives on Windows
        return str(path.resolve())


def run_evaluation(
    items: Sequence[EvalItem],
    out_dir: str | Path,
    rewards: Sequence[Reward] | Callable[[], Sequence[Reward]],
    *,
    policy_factory: Callable[[], Any] | None = None,
    images_dir: str | Path | None = None,
    seeds: int = 1,
    base_seed: int = 0,
    shared_seed: bool = False,
    batch_size: int = 8,
    gen_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    generate_fn: GenerateFn | None = None,
    expected_columns: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Generate (or find) the images of ``items`` and score them into ``out_dir``, resumably.

    Exactly one of ``policy_factory`` (build the policy; called only if images are
    missing) and ``images_dir`` (score another system's images) must be given.
    ``rewards`` may be a builder, called only if some record lacks ``expected_columns``.
    Returns the records of ``items`` (sorted by key, seed).
    """
    if (policy_factory is None) == (images_dir is None):
        raise ValueError("give exactly one of policy_factory (generate) or images_dir (score)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out_dir)
    save_references(items, out_dir)
    if images_dir is not None:
        found = find_images(images_dir, items)
        by_key = {it.key: it for it in items}
        jobs = [(by_key[k], s, p) for (k, s), p in sorted(found.items())]
    else:
        assert policy_factory is not None
        generate_missing(
            policy_factory,
            items,
            seeds,
            out_dir,
            base_seed=base_seed,
            shared_seed=shared_seed,
            batch_size=batch_size,
            gen_kwargs=gen_kwargs,
            progress=progress,
            generate_fn=generate_fn,
        )
        jobs = [(it, s, out_dir / image_relpath(it, s)) for s in range(seeds) for it in items]
    score_missing(
        store,
        jobs,
        rewards,
        expected_columns=expected_columns,
        batch_size=batch_size,
        progress=progress,
    )
    wanted = {(it.key, s) for it, s, _ in jobs}
    return [r for r in store.records() if (r["key"], int(r["seed"])) in wanted]


__all__ = [
    "IMAGE_SUFFIXES",
    "REFERENCES_DIR",
    "find_images",
    "generate_missing",
    "run_evaluation",
    "save_references",
    "score_missing",
]
