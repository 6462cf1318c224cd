"""Groups from the base policy, sampled and scored exactly as ``cgrpo train`` does.

:class:`PreflightSampler` is a :class:`~cgrpo.training.trainer.Trainer` built without a run
directory, optimizer or accelerator: the same policy (with its fresh, zero-effect LoRA,
seeded as at the start of training), sigmas, rewards and :meth:`Trainer.sample` (the
step's examples, the same start noise per group, the SDE with the config's noise and the
deterministic last step). Step ``s`` of the check samples the groups training step ``s``
would sample, so the train split shows the first steps' groups of a real run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from cgrpo.config.train import Config
from cgrpo.data.base import Example, build_dataset
from cgrpo.data.skipping import BadItems
from cgrpo.evaluation.heldout import PROPERTY_KINDS, ground_truth_metrics
from cgrpo.rewards.base import Reward, ScoreRequest
from cgrpo.sampling import make_sigmas
from cgrpo.training.runs import build_policy_from_config
from cgrpo.training.scoring import build_rewards
from cgrpo.training.seeds import derive_seed, generator_for
from cgrpo.training.trainer import Trainer

SPLITS = ("train", "heldout")

#: Longest side of the thumbnails kept for the example-group page.
THUMB = 128


class PreflightSampler(Trainer):
    """The trainer's sampling and scoring on ``dataset``, nothing else."""

    def __init__(self, config: Config, dataset: Any, device: torch.device | None = None) -> None:
        self.config = config
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.rank, self.world_size = 0, 1
        torch.manual_seed(derive_seed(config.seed, "init"))  # as TrainerSetup._setup
        self.policy = build_policy_from_config(config, self.device, with_lora=True)
        self.dataset = dataset
        self.items = BadItems(dataset, config.data.max_bad_fraction)  # as the trainer picks
        self.scorer = build_rewards(config.rewards, self.device, config.train.offload_rewards)
        s = config.sampling
        self.sigmas = make_sigmas(self.policy, s.num_steps, s.shift, s.dynamic_shift)


def matches_kind(example: Example, kind: str | None) -> bool:
    """``kind`` None keeps everything; ``property`` also keeps DreamBench's
    ``property_modification``."""
    if kind is None:
        return True
    got = str(example.metadata.get("kind", ""))
    return got == kind or (kind == "property" and got in PROPERTY_KINDS)


def select_examples(dataset: Any, kind: str | None, count: int, seed: int) -> list[Example]:
    """Up to ``count`` examples of ``kind``, in a seeded random order of ``dataset``."""
    order = torch.randperm(len(dataset), generator=generator_for(seed, "preflight-kind"))
    out = []
    for i in order.tolist():
        example = dataset[i]
        if matches_kind(example, kind):
            out.append(example)
            if len(out) == count:
                break
    return out


def preflight_dataset(config: Config, split: str) -> Any:
    """The training data (``train``) or the config's evaluation data (``heldout``)."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
    data = config.data if split == "train" else config.eval.data
    return build_dataset(data.name, data.options, split)


@dataclass
class SampledGroups:
    """What the check measured on: ``n`` groups of ``group_size`` samples (rows contiguous).

    ``scores`` holds every config reward column and every ground-truth monitor on the
    generated images; ``perturbed[name][column]`` the reward columns on perturbed images.
    ``thumbs`` are uint8 ``[B, 3, h, w]`` copies of the images for the example page.
    """

    group_size: int
    examples: list[Example]  # one per group
    scores: dict[str, torch.Tensor]
    perturbed: dict[str, dict[str, torch.Tensor]]
    roles: dict[str, str]  # column -> prompt / identity / monitor / ground-truth
    thumbs: torch.Tensor
    psnr: dict[str, float]  # perturbation -> PSNR (dB) over all the images
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def n_groups(self) -> int:
        return len(self.examples)


def _thumbs(images: torch.Tensor) -> torch.Tensor:
    h, w = images.shape[-2:]
    if max(h, w) > THUMB:
        size = (max(1, h * THUMB // max(h, w)), max(1, w * THUMB // max(h, w)))
        images = torch.nn.functional.interpolate(images, size=size, mode="area")
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def _psnr(mse: float) -> float:
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def _score(rewards: list[Reward], request: ScoreRequest) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for reward in rewards:
        out.update({c: v.float().cpu() for c, v in reward.score(request).items()})
    return out


def sample_groups(
    config: Config,
    *,
    groups: int,
    split: str = "train",
    kind: str | None = None,
    perturbations: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    device: torch.device | None = None,
    progress: bool = True,
) -> SampledGroups:
    """Sample ``groups`` groups from the base policy as training does and score them, clean
    and under each of ``perturbations`` (``images -> images``, applied to the decoded batch).
    """
    import time

    t0 = time.perf_counter()
    dataset = preflight_dataset(config, split)
    monitors = ground_truth_metrics(dataset)
    if kind is not None or split == "heldout":
        # A list of the chosen examples: training's step order then walks through them.
        picked = select_examples(dataset, kind, groups, config.seed)
        if not picked:
            raise ValueError(f"no {split} example has metadata kind {kind!r}")
        source: Any = picked
    else:
        source = dataset
    sampler = PreflightSampler(config, source, device)
    roles = {c: s.role for c, s in sampler.scorer.columns.items()}
    roles.update({c: "ground-truth" for m in monitors for c in m.columns})
    per_step = config.sampling.groups_per_step
    groups = min(groups, len(source)) if isinstance(source, list) else groups
    steps = math.ceil(groups / per_step)
    g = config.sampling.group_size
    setup = time.perf_counter() - t0
    examples: list[Example] = []
    clean: list[dict[str, torch.Tensor]] = []
    noisy: dict[str, list[dict[str, torch.Tensor]]] = {p: [] for p in perturbations}
    squared_error = dict.fromkeys(perturbations, 0.0)
    values = 0  # image values seen, for the PSNR
    thumbs = []
    timing = {"sample": 0.0, "score": 0.0}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=groups, desc="preflight", unit="group", dynamic_ncols=True)
    for step in range(steps):
        t1 = time.perf_counter()
        rollout = sampler.sample(step)
        take = min(per_step, groups - step * per_step)
        rows = take * g
        full = rollout.score_request()
        request = ScoreRequest(
            images=full.images[:rows],
            prompts=full.prompts[:rows],
            references=full.references[:rows],
            reference_masks=full.reference_masks[:rows],
            metadata=full.metadata[:rows],
        )
        t2 = time.perf_counter()
        scores = sampler.scorer.score(request).columns
        scores = {c: v.float().cpu() for c, v in scores.items()}
        scores.update(_score(monitors, request))
        clean.append(scores)
        values += request.images.numel()
        for name, perturb in perturbations.items():
            moved = replace(request, images=perturb(request.images))
            diff = moved.images.float().cpu() - request.images.float().cpu()
            squared_error[name] += float(diff.square().sum())
            columns = sampler.scorer.score(moved).columns
            noisy[name].append({c: v.float().cpu() for c, v in columns.items()})
        timing["sample"] += t2 - t1
        timing["score"] += time.perf_counter() - t2
        examples.extend(rollout.examples[:rows:g])
        thumbs.append(_thumbs(request.images.float().cpu()))
        del rollout
        if bar is not None:
            bar.update(take)
    if bar is not None:
        bar.close()

    def cat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {c: torch.cat([p[c] for p in parts]) for c in parts[0]}

    return SampledGroups(
        group_size=g,
        examples=examples,
        scores=cat(clean),
        perturbed={p: cat(v) for p, v in noisy.items()},
        psnr={p: _psnr(e / max(values, 1)) for p, e in squared_error.items()},
        roles=roles,
        thumbs=torch.cat(thumbs),
        seconds={"setup": setup, **timing},
    )


__all__ = [
    "SPLITS",
    "PreflightSampler",
    "SampledGroups",
    "matches_kind",
    "preflight_dataset",
    "sample_groups",
    "select_examples",
]
