"""Fixtures for the evaluation tests: the real DreamBench folder, a tiny policy, fake metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from cgrpo.policies.base import POLICIES, Condition, Policy
from cgrpo.rewards.base import REWARDS

REPO = Path(__file__).resolve().parents[2]
DREAMBENCH = (REPO / ".." / "shared" / "dreambench").resolve()


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)


@pytest.fixture
def dreambench_root() -> Path:
    """The shared DreamBench copy beside the repository (skips when it is absent)."""
    if not (DREAMBENCH / "prompts_and_classes.txt").is_file():
        pytest.skip(
            f"DreamBench data not found at {DREAMBENCH} (expected <repo>/../shared/dreambench)"
        )
    return DREAMBENCH


TINY_BACKEND = "eval-tiny-test"


class TinyEvalPolicy(Policy):
    """A 4x4-pixel policy that runs through the real sampler.

    The velocity pulls halfway towards ``denoiser(reference mean colour)``, so images depend
    on the reference, the initial noise (hence the seed) and a LoRA on ``denoiser.proj``.
    """

    backend = TINY_BACKEND
    default_lora_targets = ("proj",)

    def __init__(self, guidance: float = 1.0) -> None:
        super().__init__()
        self.guidance = guidance  # scales the target colour (a stand-in for FLUX guidance)
        self.denoiser = nn.Module()
        self.denoiser.proj = nn.Linear(3, 3)
        with torch.no_grad():
            self.denoiser.proj.weight.copy_(torch.eye(3))
            self.denoiser.proj.bias.zero_()

    def encode(self, prompts, references):
        colour = torch.stack([r[0].mean(dim=(1, 2)) for r in references])
        return Condition({"colour": colour * 2 - 1})

    def latent_shape(self):
        return (16, 3)

    def forward(self, latents, sigma, cond):
        target = self.guidance * self.denoiser.proj(cond.tensors["colour"])[:, None, :]
        return 0.5 * (latents - target) / sigma.clamp_min(1e-3)[:, None, None]

    def decode(self, latents):
        img = (latents.clamp(-1, 1) + 1) / 2
        return img.reshape(-1, 4, 4, 3).permute(0, 3, 1, 2)


GUIDED_BACKEND = "eval-tiny-guided"


def _tiny_factory(allowed: tuple[str, ...]):
    """A registry factory that refuses unknown options, as the real backends do."""

    def build(options, device, dtype):
        from cgrpo.config.schema import ConfigError

        for key in options:
            if key not in allowed:
                raise ConfigError(f"model.options.{key}", options[key], "unknown key")
        return TinyEvalPolicy(**options).to(device)

    return build


if TINY_BACKEND not in POLICIES:
    POLICIES.register(TINY_BACKEND, _tiny_factory(()))
    POLICIES.register(GUIDED_BACKEND, _tiny_factory(("guidance",)))


@pytest.fixture
def tiny_policy():
    return TinyEvalPolicy()


class MeanColourMatch:
    """A fake image-image metric: 1 - mean |colour(image) - colour(reference)| (max 1)."""

    @staticmethod
    def make(name: str = "mean-match"):
        from cgrpo.rewards.base import Reward

        class _Match(Reward):
            def __init__(self) -> None:
                super().__init__()
                self.name, self.columns = name, (name,)
                self.calls = 0
                self.scored = 0

            def _score(self, request):
                self.calls += 1
                self.scored += len(request)
                img = request.images.mean(dim=(2, 3))
                ref = torch.stack([r[0].mean(dim=(1, 2)) for r in request.references])
                return {name: 1 - (img - ref).abs().mean(dim=1)}

        return _Match()


@pytest.fixture
def mean_match():
    return MeanColourMatch.make


TEST_METRIC = "eval-test-match"
if TEST_METRIC not in REWARDS:
    REWARDS.register(TEST_METRIC, lambda options, context: MeanColourMatch.make(TEST_METRIC))


def make_items(n_subjects: int = 2, n_prompts: int = 3, size: int = 8):
    """Synthetic EvalItems: each subject a distinct flat colour reference."""
    from cgrpo.evaluation.harness import EvalItem

    items = []
    g = torch.Generator().manual_seed(0)
    for s in range(n_subjects):
        ref = torch.rand(3, 1, 1, generator=g).expand(3, size, size).clone()[None]
        for p in range(n_prompts):
            items.append(
                EvalItem(
                    index=len(items),
                    key=f"subj{s}/{p:02d}",
                    subject=f"subj{s}",
                    prompt_index=p,
                    prompt=f"prompt {p} of subj{s}",
                    kind="recontextualization" if p else "property_modification",
                    references=ref,
                    metadata={"subject": f"subj{s}"},
                )
            )
    return items


@pytest.fixture
def items_factory():
    return make_items


def synthetic_records(
    n_subjects: int = 3,
    n_prompts: int = 5,
    seeds: int = 2,
    offset: float = 0.0,
    seed: int = 0,
    metrics=("id", "prompt"),
):
    """Records with known structure: score = subject effect + prompt effect + noise + offset."""
    import numpy as np

    rng = np.random.default_rng(seed)
    records = []
    for s in range(n_subjects):
        for p in range(n_prompts):
            for k in range(seeds):
                scores = {
                    m: float(
                        0.5
                        + 0.05 * s
                        + 0.01 * p
                        + rng.normal(0, 0.02)
                        + offset * (1 if i == 0 else -0.5)
                    )
                    for i, m in enumerate(metrics)
                }
                records.append(
                    {
                        "key": f"s{s}/{p:02d}",
                        "seed": k,
                        "subject": f"s{s}",
                        "prompt_index": p,
                        "prompt": f"a thing {p}",
                        "kind": "property_modification" if p >= 3 else "recontextualization",
                        "image": "",
                        "reference": "",
                        "info": {},
                        "scores": scores,
                    }
                )
    return records


@pytest.fixture
def records_factory():
    return synthetic_records
