"""Generate-then-score evaluation of a policy (or of saved images) on a list of items.

Two entry points share the same generation and scoring helpers:

* :func:`evaluate_policy` -- in memory, for the trainer's before/after check: generate
  ``seeds`` images per item, score them with the given rewards, return one record per
  (item, seed) (see :mod:`cgrpo.evaluation.results` for the record layout).
* :func:`run_evaluation` -- on disk, for ``cgrpo eval``: images go to
  ``<out>/images/<subject>/<prompt_index>_<seed>.png``, records to ``pairs.jsonl`` /
  ``pairs.csv``; a rerun skips images that exist and scores only missing columns, so an
  interrupted evaluation resumes and adding a metric later scores just that metric.

Seeds: image ``(item, s)`` starts from the noise of seed
``base_seed + s * SEED_STRIDE + item.index`` (``item.index`` is the item's position in the
full benchmark), so an image does not depend on batching, on which items were already done,
or on a subset filter. Images are scored after rounding to 8 bits, exactly as saved, so an
evaluation from memory, from a resumed folder, or via ``--images`` scores identical pixels.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cgrpo.evaluation.results import ResultStore, resolve_image
from cgrpo.rewards.base import Reward, ScoreRequest

SEED_STRIDE = 100_000
IMAGES_DIR = "images"
REFERENCES_DIR = "references"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

GenerateFn = Callable[..., torch.Tensor]


@dataclass
class EvalItem:
    """One evaluation pair.

    Attributes:
        index: position in the full benchmark (fixes the noise seed; see module docstring).
        key: stable unique id, ``<subject>/<prompt_index:02d>``.
        subject: subject name (folder name in the image layout).
        prompt_index: the prompt's index in the benchmark's prompt list.
        prompt: the text prompt.
        kind: prompt kind (e.g. ``recontextualization``).
        references: ``[R, 3, h, w]`` float in [0, 1].
        reference_masks: ``[R, 1, h, w]`` or None.
        metadata: ground truth passed to rewards (``ScoreRequest.metadata``); its
            str/int/float/bool entries are also written to the records' ``info``.
        reference_label: where the reference came from (a path), for records and grids.
    """

    index: int
    key: str
    subject: str
    prompt_index: int
    prompt: str
    kind: str
    references: torch.Tensor
    reference_masks: torch.Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    reference_label: str = ""

    @staticmethod
    def from_example(example: Any, index: int) -> EvalItem:
        """Wrap a :class:`cgrpo.data.base.Example` (e.g. the trainer's held-out items)."""
        meta = dict(example.metadata or {})
        key = example.key or f"item/{index:04d}"
        subject = str(meta.get("subject") or meta.get("identity") or key.split("/")[0])
        return EvalItem(
            index=index,
            key=key,
            subject=subject,
            prompt_index=int(meta.get("prompt_index", index)),
            prompt=example.prompt,
            kind=str(meta.get("kind", "")),
            references=example.references,
            reference_masks=example.reference_masks,
            metadata=meta,
        )


def image_seed(item: EvalItem, seed_index: int, base_seed: int = 0) -> int:
    """The noise seed of image ``(item, seed_index)``."""
    return base_seed + seed_index * SEED_STRIDE + item.index


def image_relpath(item: EvalItem, seed_index: int) -> str:
    """``images/<subject>/<prompt_index:02d>_<seed>.png`` (relative to the output folder)."""
    return f"{IMAGES_DIR}/{item.subject}/{item.prompt_index:02d}_{seed_index}.png"


def quantize(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` float in [0, 1] rounded to 8-bit levels (what a PNG keeps)."""
    return torch.round(images.float().clamp(0, 1) * 255) / 255


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` float in [0, 1] -> ``[H, W, 3]`` uint8."""
    arr = torch.round(image.detach().float().clamp(0, 1) * 255).to(torch.uint8)
    return arr.permute(1, 2, 0).cpu().numpy()


def save_png(image: torch.Tensor, path: str | Path) -> None:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    Image.fromarray(to_uint8(image)).save(tmp)
    tmp.replace(path)  # a killed run never leaves a half-written image that looks finished


def _contiguous_runs(items: Sequence[EvalItem], limit: int) -> Iterator[list[EvalItem]]:
    """Split ``items`` into runs of consecutive ``index`` values, at most ``limit`` long."""
    run: list[EvalItem] = []
    for item in items:
        if run and (item.index != run[-1].index + 1 or len(run) >= limit):
            yield run
            run = []
        run.append(item)
    if run:
        yield run


def generate_batches(
    policy: Any,
    items: Sequence[EvalItem],
    seed_index: int,
    *,
    base_seed: int = 0,
    batch_size: int = 8,
    gen_kwargs: dict[str, Any] | None = None,
    generate_fn: GenerateFn | None = None,
) -> Iterator[tuple[list[EvalItem], torch.Tensor]]:
    """Yield ``(items, images [b, 3, H, W] in [0, 1], quantized)`` batch by batch.

    ``generate_fn`` defaults to :func:`cgrpo.sampling.generate`, which gives item ``i`` of a
    call the noise of ``seed + i``; batches are runs of consecutive ``item.index`` so that
    each image gets the noise of :func:`image_seed`.
    """
    if generate_fn is None:
        from cgrpo.sampling import generate as generate_fn
    ordered = sorted(items, key=lambda it: it.index)
    for run in _contiguous_runs(ordered, batch_size):
        images = generate_fn(
            policy,
            [it.prompt for it in run],
            [it.references for it in run],
            seed=image_seed(run[0], seed_index, base_seed),
            batch_size=batch_size,
            **(gen_kwargs or {}),
        )
        if images.shape[0] != len(run):
            raise RuntimeError(f"generate returned {images.shape[0]} images for {len(run)} prompts")
        yield run, quantize(images)


def score_batch(
    rewards: Sequence[Reward], items: Sequence[EvalItem], images: torch.Tensor
) -> dict[str, torch.Tensor]:
    """All rewards' columns for ``images`` ``[B, 3, H, W]`` generated for ``items``."""
    request = ScoreRequest(
        images=images,
        prompts=[it.prompt for it in items],
        references=[it.references for it in items],
        reference_masks=[it.reference_masks for it in items],
        metadata=[dict(it.metadata) for it in items],
    )
    columns: dict[str, torch.Tensor] = {}
    for reward in rewards:
        for name, values in reward.score(request).items():
            if name in columns:
                raise ValueError(f"score column {name!r} is returned by two metrics")
            columns[name] = values
    return columns


def _info(item: EvalItem) -> dict[str, Any]:
    return {
        k: v
        for k, v in item.metadata.items()
        if isinstance(v, str | int | float | bool) and k not in ("subject", "kind")
    }


def base_record(item: EvalItem, seed_index: int, image: str = "") -> dict[str, Any]:
    """A record without scores (layout in :mod:`cgrpo.evaluation.results`)."""
    return {
        "key": item.key,
        "seed": seed_index,
        "subject": item.subject,
        "prompt_index": item.prompt_index,
        "prompt": item.prompt,
        "kind": item.kind,
        "image": image,
        "reference": item.reference_label,
        "info": _info(item),
        "scores": {},
    }


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)


@torch.no_grad()
def evaluate_policy(
    policy: Any,
    items: Sequence[EvalItem | Any],
    rewards: Sequence[Reward],
    *,
    gen_kwargs: dict[str, Any] | None = None,
    seeds: int = 1,
    base_seed: int = 0,
    batch_size: int = 8,
    progress: bool = False,
    generate_fn: GenerateFn | None = None,
) -> list[dict[str, Any]]:
    """Generate ``seeds`` images per item with ``policy`` and score them, in memory.

    Args:
        policy: a :class:`cgrpo.policies.base.Policy` (adapter loaded or not).
        items: :class:`EvalItem` s, or :class:`cgrpo.data.base.Example` s (wrapped in order).
        rewards: built rewards; every column they return becomes a score column.
        gen_kwargs: ``num_steps``, ``shift``, ``dynamic_shift`` for the sampler.
        seeds: images per item; base_seed: see :func:`image_seed`.

    Returns:
        One record per (item, seed), ordered by seed then item, with ``scores`` filled;
        summarise with :func:`cgrpo.evaluation.tables.summarize`.
    """
    items = [
        it if isinstance(it, EvalItem) else EvalItem.from_example(it, i)
        for i, it in enumerate(items)
    ]
    records = []
    bar = _progress(len(items) * seeds, "evaluate", progress)
    for s in range(seeds):
        for run, images in generate_batches(
            policy,
            items,
            s,
            base_seed=base_seed,
            batch_size=batch_size,
            gen_kwargs=gen_kwargs,
            generate_fn=generate_fn,
        ):
            scores = score_batch(rewards, run, images)
            for j, item in enumerate(run):
                record = base_record(item, s)
                record["scores"] = {k: float(v[j]) for k, v in scores.items()}
                records.append(record)
            bar.update(len(run))
    bar.close()
    return records


# ----- on-disk evaluation with resume -----------------------------------------------------------


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
        image = Image.fromarray(to_uint8(item.references[0]))
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
    bar = _progress(total, "generate", progress)
    for s, pending in todo.items():
        for run, images in generate_batches(
            policy,
            pending,
            s,
            base_seed=base_seed,
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
    bar = _progress(len(pending), "score", progress)

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
    import os

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


def load_record_image(results_dir: Path, record: dict[str, Any]) -> torch.Tensor:
    """The image of a record as ``[3, H, W]`` float."""
    return _load_image(resolve_image(results_dir, record["image"]))


__all__ = [
    "IMAGES_DIR",
    "REFERENCES_DIR",
    "SEED_STRIDE",
    "EvalItem",
    "evaluate_policy",
    "find_images",
    "generate_batches",
    "generate_missing",
    "image_relpath",
    "image_seed",
    "quantize",
    "run_evaluation",
    "save_png",
    "save_references",
    "score_batch",
    "score_missing",
]
