"""Stages 3 and 4 of a training step: advantages and the clipped policy update.

:class:`PolicyUpdate` holds the :class:`~cgrpo.training.trainer.Trainer` methods that turn a
scored rollout into advantages (per-reward group z-scores, schedule weights at each trained
step's denoising index, the combining strategy) and apply the clipped policy-gradient update
on mini-batches; :func:`stratified_minibatches` splits a step's rows so that any number of
processes trains the one-process LoRA.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch

from cgrpo.config.train import Config
from cgrpo.grpo import (
    combine_advantages,
    gaussian_kl,
    group_normalize,
    ppo_clip_loss,
    sde_step,
    select_timesteps_random,
    select_timesteps_window,
)
from cgrpo.policies.base import Policy
from cgrpo.rewards.base import RewardBatch
from cgrpo.training.rollout import Advantages, Rollout
from cgrpo.training.scoring import ScoredRewards
from cgrpo.training.seeds import generator_for


def stratified_minibatches(
    groups: Sequence[int], group_size: int, count: int, seed: int, step: int
) -> list[torch.Tensor]:
    """Split a process's ``len(groups) * group_size`` rows into ``count`` equal mini-batches.

    ``groups`` are the positions of the process's groups among all processes' groups of the
    step (contiguous, as :meth:`Trainer.step_groups`). Group ``q`` orders its samples at
    random (keyed by ``seed, step, q``); its ``p``-th sample takes the global slot
    ``t = q * group_size + p`` and joins mini-batch ``t % count``. A process holds a
    contiguous run of ``len(groups) * group_size`` slots, which ``count`` divides, so each of
    its mini-batches has the same size, and mini-batch ``m`` of one process holding every
    group is the union of mini-batch ``m`` over any number of processes: DDP's gradient
    average then equals the one-process mean. Returns ``count`` index tensors into the rows.
    """
    rows = len(groups) * group_size
    if rows % count:
        raise ValueError(f"{count} mini-batches do not split {rows} rows evenly")
    buckets: list[list[int]] = [[] for _ in range(count)]
    for j, q in enumerate(groups):
        order = torch.randperm(group_size, generator=generator_for(seed, "order", step, q))
        for p, k in enumerate(order.tolist()):
            buckets[(q * group_size + p) % count].append(j * group_size + k)
    return [torch.tensor(b) for b in buckets]


class PolicyUpdate:
    """Advantages and the update of the :class:`~cgrpo.training.trainer.Trainer` (which
    builds the attributes below in its set-up)."""

    config: Config
    policy: Policy
    model: Any  # the policy as accelerate prepared it (DDP-wrapped with several processes)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    accelerator: Any
    device: torch.device
    sigmas: torch.Tensor
    scorer: ScoredRewards
    trained_columns: list[str]
    schedule: Callable[[torch.Tensor, int], torch.Tensor]
    step_groups: Callable[[], range]

    # ------------------------------------------------------------------ stage 3: advantages
    def advantages(self, rollout: Rollout, rewards: RewardBatch, step: int) -> Advantages:
        cfg = self.config
        n_steps = cfg.sampling.num_steps
        cols = self.trained_columns
        per_reward = group_normalize(rewards.matrix(cols), rollout.group_size, column_names=cols)
        b = len(rollout)
        if cfg.train.timestep_selection == "window":
            t = cfg.train
            timesteps = select_timesteps_window(
                n_steps, t.window_size, t.window_stride, step, b, t.window_shift_interval
            )
        else:
            timesteps = torch.cat(
                [
                    select_timesteps_random(
                        n_steps,
                        cfg.train.timestep_fraction,
                        rollout.group_size,
                        generator=generator_for(cfg.seed, "timesteps", step, q),
                    )
                    for q in self.step_groups()
                ]
            )
        weights = self._reward_weights(timesteps)  # [B, T, K]
        combined = torch.stack(
            [
                combine_advantages(
                    per_reward,
                    weights[:, j],
                    cfg.advantage.strategy,
                    gamma=cfg.advantage.gamma,
                    group_size=rollout.group_size,
                )
                for j in range(timesteps.shape[1])
            ],
            dim=1,
        )
        return Advantages(per_reward, cols, timesteps, combined, weights, rewards)

    def _reward_weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        """``[B, T, K]``: the schedule's (w_prompt, w_identity) at each trained step's real
        denoising index, shared among the rewards of each role by their ``weight``."""
        specs = [self.scorer.columns[c] for c in self.trained_columns]
        roles = {s.role for s in specs}
        role_w = self.schedule(timesteps, self.config.sampling.num_steps)  # [B, T, 2]
        out = []
        for spec in specs:
            same = sum(s.weight for s in specs if s.role == spec.role)
            share = spec.weight / same
            if len(roles) == 1:  # one role only: the schedule has nothing to trade off
                out.append(torch.full(timesteps.shape, share))
            else:
                out.append(role_w[..., 0 if spec.role == "prompt" else 1] * share)
        return torch.stack(out, dim=-1).float()

    # ------------------------------------------------------------------ stage 4: update
    def update(self, rollout: Rollout, adv: Advantages, step: int) -> dict[str, float]:
        cfg = self.config
        t = cfg.train
        traj = rollout.trajectory
        n_t = adv.timesteps.shape[1]
        sigmas = self.sigmas.to(self.device)
        minibatches = stratified_minibatches(
            self.step_groups(), rollout.group_size, t.updates_per_step, cfg.seed, step
        )
        stats: dict[str, float] = defaultdict(float)
        first_ratio_dev = 0.0
        self.model.train()
        for mb_index, mb in enumerate(minibatches):
            pairs = [(int(i), j) for i in mb for j in range(n_t)]
            n_pairs = len(pairs)
            chunks = [pairs[k : k + t.micro_batch] for k in range(0, n_pairs, t.micro_batch)]
            for c_index, chunk in enumerate(chunks):
                rows = torch.tensor([p[0] for p in chunk])
                cols = torch.tensor([p[1] for p in chunk])
                step_idx = adv.timesteps[rows, cols]
                x = traj.latents[rows, step_idx].to(self.device)
                x_next = traj.latents[rows, step_idx + 1].to(self.device)
                old_lp = traj.log_probs[rows, step_idx].to(self.device)
                a = adv.combined[rows, cols].to(self.device)
                cond = rollout.cond.select(rows)
                last = c_index == len(chunks) - 1
                sync = nullcontext() if last else self.accelerator.no_sync(self.model)
                with sync, self.accelerator.autocast():
                    v = self.model(x, sigmas[step_idx], cond)
                    res = sde_step(
                        v,
                        x,
                        sigmas,
                        step_idx.to(self.device),
                        cfg.sampling.noise_level,
                        cfg.sampling.sde_kind,
                        prev_sample=x_next,
                    )
                    loss, ps = ppo_clip_loss(res.log_prob, old_lp, a, t.clip_range, t.adv_clip)
                    total = loss
                    kl_value = 0.0
                    if t.kl_coef > 0:
                        with torch.no_grad(), self.policy.adapter_disabled():
                            v_ref = self.policy(x, sigmas[step_idx], cond)
                        ref = sde_step(
                            v_ref,
                            x,
                            sigmas,
                            step_idx.to(self.device),
                            cfg.sampling.noise_level,
                            cfg.sampling.sde_kind,
                            prev_sample=x_next,
                        )
                        kl = gaussian_kl(res.mean, ref.mean, res.std).mean()
                        total = total + t.kl_coef * kl
                        kl_value = float(kl.detach())
                    frac = len(chunk) / n_pairs
                    self.accelerator.backward(total * frac)
                stats["loss"] += float(loss.detach()) * frac / len(minibatches)
                stats["kl"] += kl_value * frac / len(minibatches)
                stats["clip_fraction"] += ps.clip_fraction * frac / len(minibatches)
                stats["ratio_mean"] += ps.ratio_mean * frac / len(minibatches)
                stats["ratio_max"] = max(stats.get("ratio_max", -math.inf), ps.ratio_max)
                stats["ratio_min"] = min(stats.get("ratio_min", math.inf), ps.ratio_min)
                if mb_index == 0:
                    first_ratio_dev = max(
                        first_ratio_dev, abs(ps.ratio_max - 1), abs(ps.ratio_min - 1)
                    )
            params = self.policy.trainable_parameters()
            if t.grad_clip > 0:
                norm = self.accelerator.clip_grad_norm_(params, t.grad_clip)
            else:
                norm = torch.norm(
                    torch.stack([p.grad.norm() for p in params if p.grad is not None])
                )
            stats["grad_norm"] += float(norm) / len(minibatches)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        stats["lr"] = self.scheduler.get_last_lr()[0]  # the LR this step's updates used
        self.scheduler.step()
        stats["first_update_ratio_dev"] = first_ratio_dev
        return dict(stats)

    # ------------------------------------------------------------------ step metrics
    def _step_metrics(self, rewards: RewardBatch, adv: Advantages) -> dict[str, float]:
        m: dict[str, float] = {}
        for name, values in rewards.columns.items():
            gathered = self.accelerator.gather(values.to(self.device)).float().cpu()
            m[f"reward/{name}/mean"] = float(gathered.mean())
            m[f"reward/{name}/std"] = float(gathered.std()) if gathered.numel() > 1 else 0.0
        for k, name in enumerate(adv.columns):
            col = adv.per_reward[:, k]
            m[f"adv/{name}/abs_mean"] = float(col.abs().mean())
            m[f"adv/{name}/positive"] = float((col > 0).float().mean())
        if adv.per_reward.shape[1] >= 2:
            signs = torch.sign(adv.per_reward)
            nonzero = (signs != 0).all(dim=1)
            disagree = (signs.max(dim=1).values > 0) & (signs.min(dim=1).values < 0)
            m["conflict_rate"] = float((disagree & nonzero).float().mean())
        m["adv/combined/abs_mean"] = float(adv.combined.abs().mean())
        m["adv/weight_prompt_mean"] = float(adv.weights[..., 0].mean())
        return m
