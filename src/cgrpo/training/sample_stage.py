"""Stage 1 of a training step: sample a rollout.

:class:`RolloutSampling` holds the :class:`~cgrpo.training.trainer.Trainer` methods that pick
the step's examples (a seeded permutation per epoch, each process its own whole groups),
choose which sampler steps are stochastic (all but the last, or the MixGRPO window) and run
one batched SDE rollout of G samples per example from the same start noise per group,
decoded in ``sampling.chunk_size`` chunks. Every draw is keyed by the group's position in
the step's global list of groups (:mod:`cgrpo.training.seeds`), never by the process.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from cgrpo.config.train import Config
from cgrpo.data.base import Example
from cgrpo.data.skipping import BadItems
from cgrpo.grpo import sliding_window
from cgrpo.policies.base import Policy
from cgrpo.sampling import initial_noise, merged_lora, sample_trajectory
from cgrpo.training.rollout import Rollout
from cgrpo.training.seeds import generator_for


class RolloutSampling:
    """Sampling of the :class:`~cgrpo.training.trainer.Trainer` (which builds the attributes
    below in its set-up)."""

    config: Config
    policy: Policy
    device: torch.device
    rank: int
    world_size: int
    dataset: Any
    items: BadItems
    sigmas: torch.Tensor

    def step_groups(self) -> range:
        """Positions of this process's groups among the ``W * groups_per_step`` groups that
        all processes sample in a step (the same at every step)."""
        per_process = self.config.sampling.groups_per_step
        return range(self.rank * per_process, (self.rank + 1) * per_process)

    def examples_for_step(self, step: int) -> list[Example]:
        """This process's examples at ``step``: a seeded permutation per epoch, no repeats."""
        n = len(self.dataset)
        per_step = self.world_size * self.config.sampling.groups_per_step
        out = []
        for q in self.step_groups():
            epoch, offset = divmod(step * per_step + q, n)
            perm = torch.randperm(n, generator=generator_for(self.config.seed, "epoch", epoch))
            out.append(self.items.pick(perm, offset))  # past bad items (data/skipping.py)
        return out

    def trained_steps_mask(self, step: int) -> torch.Tensor:
        """``[N]`` bool: which sampler steps are stochastic this step.

        Only the first N-1 steps are ever trained, so the last step is always the
        deterministic ODE step: noise injected there would only blur the images the
        rewards score (in pixel space it shows as speckle). MixGRPO: only the window.
        """
        t = self.config.train
        n = self.config.sampling.num_steps
        if t.timestep_selection == "window":
            window = sliding_window(
                n, t.window_size, t.window_stride, step, t.window_shift_interval
            )
            return window.sde_mask()
        mask = torch.ones(n, dtype=torch.bool)
        mask[-1] = False
        return mask

    def sample(self, step: int) -> Rollout:
        cfg = self.config.sampling
        examples = self.examples_for_step(step)
        g = cfg.group_size
        with torch.no_grad():
            cond = self.policy.encode(
                [e.prompt for e in examples], [e.references for e in examples]
            ).to(self.device)
        cond = cond.repeat_interleave(g)
        seed = self.config.seed
        noise = torch.cat(
            [
                initial_noise(
                    self.policy,
                    g,
                    generator_for(seed, "noise", step, q),
                    group_size=g if cfg.same_noise else 1,
                    device=self.device,
                )
                for q in self.step_groups()
            ]
        )
        self.policy.eval()
        with merged_lora(self.policy) if cfg.merge_lora else nullcontext():
            traj = sample_trajectory(
                self.policy,
                cond,
                noise,
                self.sigmas,
                noise_level=cfg.noise_level,
                kind=cfg.sde_kind,
                sde_steps=self.trained_steps_mask(step),
                generator=[
                    generator_for(seed, "sde", step, q, k)
                    for q in self.step_groups()
                    for k in range(g)
                ],
                chunk_size=cfg.chunk_size,
            )
        with torch.no_grad():
            images = self._decode(traj.final)
        group_examples = [e for e in examples for _ in range(g)]
        return Rollout(group_examples, cond, traj, images, g)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        chunk = self.config.sampling.chunk_size or latents.shape[0]
        return torch.cat(
            [
                self.policy.decode(latents[i : i + chunk]).float().cpu()
                for i in range(0, latents.shape[0], chunk)
            ]
        )


__all__ = ["RolloutSampling"]
