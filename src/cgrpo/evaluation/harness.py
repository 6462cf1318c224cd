"""Generate-then-score evaluation of a policy on a list of items: the one evaluation path.

Two entry points share the generation and scoring helpers defined here:

* :func:`evaluate_policy` -- in memory, for the trainer's before/after check
  (:mod:`cgrpo.evaluation.heldout`): generate ``seeds`` images per item, score them with the
  given rewards, return one record per (item, seed) (layout in
  :mod:`cgrpo.evaluation.results`) and, on request, the scored images.
* :func:`cgrpo.evaluation.resumable.run_evaluation` -- on disk, for ``cgrpo eval``: the same
  batches saved as PNGs, records in ``pairs.jsonl``; a rerun skips finished work.

Seeds: image ``(item, s)`` starts from the noise of seed
``base_seed + s * SEED_STRIDE + item.index`` (``item.index`` is the item's position in the
full benchmark), so an image does not depend on batching, on which items were already done,
or on a subset filter. With ``shared_seed`` every item's image ``s`` uses ``base_seed + s``
instead: the same noise for every pair, as UNO's DreamBench script does (seed 3407). Images are scored after rounding to 8 bits, exactly as saved, so an
evaluation from memory, from a resumed folder, or via ``--images`` scores identical pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cgrpo.rewards.base import Reward, ScoreRequest
from cgrpo.rewards.images import quantize, to_uint8_array

SEED_STRIDE = 100_000
IMAGES_DIR = "images"

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


def image_seed(
    item: EvalItem, seed_index: int, base_seed: int = 0, shared_seed: bool = False
) -> int:
    """The noise seed of image ``(item, seed_index)`` (see the module docstring)."""
    if shared_seed:
        return base_seed + seed_index
    return base_seed + seed_index * SEED_STRIDE + item.index


def image_relpath(item: EvalItem, seed_index: int) -> str:
    """``images/<subject>/<prompt_index:02d>_<seed>.png`` (relative to the output folder)."""
    return f"{IMAGES_DIR}/{item.subject}/{item.prompt_index:02d}_{seed_index}.png"


def save_png(image: torch.Tensor, path: str | Path) -> None:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    Image.fromarray(to_uint8_array(image)).save(tmp)
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
    shared_seed: bool = False,
    batch_size: int = 8,
    gen_kwargs: dict[str, Any] | None = None,
    generate_fn: GenerateFn | None = None,
) -> Iterator[tuple[list[EvalItem], torch.Tensor]]:
    """Yield ``(items, images [b, 3, H, W] in [0, 1], quantized)`` batch by batch.

    ``generate_fn`` defaults to :func:`cgrpo.sampling.generate`, which gives item ``i`` of a
    call the noise of ``seed + i``; batches are runs of consecutive ``item.index`` so that
    each image gets the noise of :func:`image_seed` (one item per call with ``shared_seed``).
    """
    if generate_fn is None:
        from cgrpo.sampling import generate as generate_fn
    ordered = sorted(items, key=lambda it: it.index)
    for run in _contiguous_runs(ordered, 1 if shared_seed else batch_size):
        images = generate_fn(
            policy,
            [it.prompt for it in run],
            [it.references for it in run],
            seed=image_seed(run[0], seed_index, base_seed, shared_seed),
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


@dataclass
class PolicyEvaluation:
    """What :func:`evaluate_policy` returns.

    Attributes:
        records: one per (item, seed), ordered by seed then item, ``scores`` filled.
        images: ``[len(records), 3, H, W]`` float in [0, 1], the scored (8-bit) pixels in
            record order; None unless asked for (``keep_images``).
    """

    records: list[dict[str, Any]]
    images: torch.Tensor | None = None


@torch.no_grad()
def evaluate_policy(
    policy: Any,
    items: Sequence[EvalItem | Any],
    rewards: Sequence[Reward],
    *,
    gen_kwargs: dict[str, Any] | None = None,
    seeds: int = 1,
    base_seed: int = 0,
    shared_seed: bool = False,
    batch_size: int = 8,
    progress: bool = False,
    generate_fn: GenerateFn | None = None,
    keep_images: bool = False,
) -> PolicyEvaluation:
    """Generate ``seeds`` images per item with ``policy`` and score them, in memory.

    Args:
        policy: a :class:`cgrpo.policies.base.Policy` (adapter loaded or not).
        items: :class:`EvalItem` s, or :class:`cgrpo.data.base.Example` s (wrapped in order).
        rewards: built rewards; every column they return becomes a score column.
        gen_kwargs: ``num_steps``, ``shift``, ``dynamic_shift`` for the sampler.
        seeds: images per item; base_seed, shared_seed: see :func:`image_seed`.
        keep_images: also return the images (e.g. for the trainer's before/after grid).

    Returns:
        A :class:`PolicyEvaluation`; summarise its records with
        :func:`cgrpo.evaluation.stats.tables.summarize`.
    """
    items = [
        it if isinstance(it, EvalItem) else EvalItem.from_example(it, i)
        for i, it in enumerate(items)
    ]
    records, kept = [], []
    bar = progress_bar(len(items) * seeds, "evaluate", progress)
    for s in range(seeds):
        for run, images in generate_batches(
            policy,
            items,
            s,
            base_seed=base_seed,
            shared_seed=shared_seed,
            batch_size=batch_size,
            gen_kwargs=gen_kwargs,
            generate_fn=generate_fn,
        ):
            scores = score_batch(rewards, run, images)
            for j, item in enumerate(run):
                record = base_record(item, s)
                record["scores"] = {k: float(v[j]) for k, v in scores.items()}
                records.append(record)
            if keep_images:
                kept.append(images)
            bar.update(len(run))
    bar.close()
    return PolicyEvaluation(records, torch.cat(kept) if kept else None)


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar over images (hidden when ``enabled`` is False)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)


__all__ = [
    "IMAGES_DIR",
    "SEED_STRIDE",
    "EvalItem",
    "PolicyEvaluation",
    "base_record",
    "evaluate_policy",
    "generate_batches",
    "image_relpath",
    "image_seed",
    "progress_bar",
    "save_png",
    "score_batch",
]
