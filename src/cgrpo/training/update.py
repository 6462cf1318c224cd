"""Stages 3 and 4 of a training step: advantages and the clipped policy update.

:class:`PolicyUpdate` holds the :class:`~cgrpo.training.trainer.Trainer` methods that turn a
scored rollout into advantages (:func:`~cgrpo.grpo.compute_advantages` on the rewards of
every process: group-relative step, schedule weights at each trained step's denoising index,
the combining strategy, optional batch z-score) and apply the clipped policy-gradient update
on mini-batches; :func:`stratified_minibatches` splits a step's rows so that any number of
processes trains the one-process LoRA.

``mgda`` combines in the update: each micro-batch takes one backward pass per reward over
the LoRA parameters, the per-reward gradients accumulate over the micro-batches of a
mini-batch, are averaged across processes, and :func:`~cgrpo.grpo.mgda_direction` turns
them into the gradient the optimizer steps on. Its EMA of alpha lives in the optimizer's
first parameter group (``"mgda_alpha"``), so every checkpoint carries it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from functools import cached_property
from typing import Any

import torch

from cgrpo.config.train import Config
from cgrpo.grpo import (
    GateParams,
    compute_advantages,
    gaussian_kl,
    group_normalize,
    mgda_direction,
    ppo_clip_loss,
    sde_step,
    select_timesteps_random,
    select_timesteps_window,
)
from cgrpo.grpo.noise_floor import floor_rewards, resolve_noise_floors
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
    rank: int
    world_size: int
    sigmas: torch.Tensor
    scorer: ScoredRewards
    trained_columns: list[str]
    schedule: Callable[[torch.Tensor, int], torch.Tensor]
    step_groups: Callable[[], range]

    # ------------------------------------------------------------------ stage 3: advantages
    def advantages(self, rollout: Rollout, rewards: RewardBatch, step: int) -> Advantages:
        """Advantages of this process's rows, computed on every process's rows so that batch
        statistics (``normalize: batch``, gdpo) are those of the whole step."""
        cfg = self.config
        a = cfg.advantage
        cols = self.trained_columns
        g = rollout.group_size
        everyone = self._all_rows(rewards.matrix(cols))
        # groups whose spread in a reward is under its noise floor: flat in that reward
        everyone, floor_kept = floor_rewards(everyone, g, cols, self.noise_floors)
        timesteps = self._trained_timesteps(step, everyone.shape[0], g)
        weights = self._reward_weights(timesteps)  # [W*B, T, K]
        out = compute_advantages(
            everyone,
            weights,
            a.strategy,
            group_size=g,
            roles=[self.scorer.columns[c].role for c in cols],
            normalize=a.normalize,
            batch_normalize=a.batch_normalize,
            gamma=a.gamma,
            gate=GateParams(a.gate_threshold, a.gate_penalty),
            column_names=cols,
        )
        per_reward = group_normalize(everyone, g, column_names=cols, normalize=a.normalize)
        mine = slice(self.rank * len(rollout), (self.rank + 1) * len(rollout))
        objectives = out[mine] if out.ndim == 3 else None
        combined = objectives.mean(dim=-1) if objectives is not None else out[mine]
        return Advantages(
            per_reward[mine],
            cols,
            timesteps[mine],
            combined,
            weights[mine],
            rewards,
            objectives,
            floor_kept,
        )

    @cached_property
    def noise_floors(self) -> torch.Tensor | None:
        """``[K]`` floors of ``advantage.noise_floor*`` for the trained columns, or None
        (resolved on first use; a ConfigError names an unknown column or a missing file)."""
        return resolve_noise_floors(self.config.advantage, self.trained_columns)

    def _all_rows(self, local: torch.Tensor) -> torch.Tensor:
        """``[W * B, K]``: every process's rows in process order (its groups' positions)."""
        if self.world_size == 1:
            return local
        return self.accelerator.gather(local.to(self.device)).cpu()

    def _trained_timesteps(self, step: int, rows: int, group_size: int) -> torch.Tensor:
        """``[rows, T]`` trained steps of every group of the step (keyed by the group)."""
        cfg = self.config
        t = cfg.train
        n_steps = cfg.sampling.num_steps
        if t.timestep_selection == "window":
            return select_timesteps_window(
                n_steps, t.window_size, t.window_stride, step, rows, t.window_shift_interval
            )
        return torch.cat(
            [
                select_timesteps_random(
                    n_steps,
                    t.timestep_fraction,
                    group_size,
                    generator=generator_for(cfg.seed, "timesteps", step, q),
                )
                for q in range(rows // group_size)
            ]
        )

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
        share = 1 / len(minibatches)
        stats: dict[str, float] = defaultdict(float)
        first_ratio_dev = 0.0
        self.model.train()
        for mb_index, mb in enumerate(minibatches):
            pairs = [(int(i), j) for i in mb for j in range(n_t)]
            n_pairs = len(pairs)
            chunks = [pairs[k : k + t.micro_batch] for k in range(0, n_pairs, t.micro_batch)]
            per_reward = self._zero_grads(adv) if adv.objectives is not None else None
            for c_index, chunk in enumerate(chunks):
                rows = torch.tensor([p[0] for p in chunk])
                cols = torch.tensor([p[1] for p in chunk])
                step_idx = adv.timesteps[rows, cols]
                x = traj.latents[rows, step_idx].to(self.device)
                x_next = traj.latents[rows, step_idx + 1].to(self.device)
                old_lp = traj.log_probs[rows, step_idx].to(self.device)
                cond = rollout.cond.select(rows)
                frac = len(chunk) / n_pairs
                inputs = (x, x_next, step_idx, cond, sigmas)
                if per_reward is not None:
                    a = adv.objectives[rows, cols].to(self.device)  # type: ignore[index]
                    loss, ps, kl_value = self._backward_per_reward(
                        inputs, old_lp, a, frac, per_reward
                    )
                else:
                    a = adv.combined[rows, cols].to(self.device)
                    last = c_index == len(chunks) - 1
                    sync = nullcontext() if last else self.accelerator.no_sync(self.model)
                    with sync, self.accelerator.autocast():
                        res, kl = self._step_log_probs(self.model, *inputs)
                        loss, ps = ppo_clip_loss(res.log_prob, old_lp, a, t.clip_range, t.adv_clip)
                        total = loss if kl is None else loss + t.kl_coef * kl
                        self.accelerator.backward(total * frac)
                    kl_value = 0.0 if kl is None else float(kl.detach())
                    loss = float(loss.detach())
                stats["loss"] += loss * frac * share
                stats["kl"] += kl_value * frac * share
                stats["clip_fraction"] += ps.clip_fraction * frac * share
                stats["ratio_mean"] += ps.ratio_mean * frac * share
                stats["ratio_max"] = max(stats.get("ratio_max", -math.inf), ps.ratio_max)
                stats["ratio_min"] = min(stats.get("ratio_min", math.inf), ps.ratio_min)
                if mb_index == 0:
                    first_ratio_dev = max(
                        first_ratio_dev, abs(ps.ratio_max - 1), abs(ps.ratio_min - 1)
                    )
            if per_reward is not None:
                self._apply_mgda(per_reward, adv.columns, stats, share)
            params = self.policy.trainable_parameters()
            if t.grad_clip > 0:
                norm = self.accelerator.clip_grad_norm_(params, t.grad_clip)
            else:
                norm = torch.norm(
                    torch.stack([p.grad.norm() for p in params if p.grad is not None])
                )
            stats["grad_norm"] += float(norm) * share
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        stats["lr"] = self.scheduler.get_last_lr()[0]  # the LR this step's updates used
        self.scheduler.step()
        stats["first_update_ratio_dev"] = first_ratio_dev
        return dict(stats)

    def _step_log_probs(
        self,
        model: Any,
        x: torch.Tensor,
        x_next: torch.Tensor,
        step_idx: torch.Tensor,
        cond: Any,
        sigmas: torch.Tensor,
    ) -> tuple[Any, torch.Tensor | None]:
        """The SDE step's log-prob of ``x_next`` under ``model``, and the KL to the frozen
        base at the same step (None when ``train.kl_coef`` is 0)."""
        cfg = self.config
        idx = step_idx.to(self.device)
        v = model(x, sigmas[step_idx], cond)
        noise, kind = cfg.sampling.noise_level, cfg.sampling.sde_kind
        res = sde_step(v, x, sigmas, idx, noise, kind, prev_sample=x_next)
        if cfg.train.kl_coef <= 0:
            return res, None
        with torch.no_grad(), self.policy.adapter_disabled():
            v_ref = self.policy(x, sigmas[step_idx], cond)
        ref = sde_step(v_ref, x, sigmas, idx, noise, kind, prev_sample=x_next)
        return res, gaussian_kl(res.mean, ref.mean, res.std).mean()

    # ------------------------------------------------------------------ mgda
    def _zero_grads(self, adv: Advantages) -> list[list[torch.Tensor]]:
        """One zero gradient per LoRA parameter for each reward (+ one for the KL term)."""
        slots = len(adv.columns) + (1 if self.config.train.kl_coef > 0 else 0)
        params = self.policy.trainable_parameters()
        return [[torch.zeros_like(p) for p in params] for _ in range(slots)]

    def _backward_per_reward(
        self,
        inputs: tuple[Any, ...],
        old_lp: torch.Tensor,
        a: torch.Tensor,
        frac: float,
        grads: list[list[torch.Tensor]],
    ) -> tuple[float, Any, float]:
        """One forward, then one backward per reward (and one for the KL term) into
        ``grads``. The unwrapped policy runs it: DDP's gradient hooks would average only
        the sum; the per-reward gradients are averaged in :meth:`_apply_mgda`."""
        t = self.config.train
        with self.accelerator.autocast():
            res, kl = self._step_log_probs(self.policy, *inputs)
            results = [
                ppo_clip_loss(res.log_prob, old_lp, a[:, k], t.clip_range, t.adv_clip)
                for k in range(a.shape[1])
            ]
        terms = [loss for loss, _ in results] + ([t.kl_coef * kl] if kl is not None else [])
        params = self.policy.trainable_parameters()
        for i, term in enumerate(terms):
            parts = torch.autograd.grad(
                term * frac, params, retain_graph=i < len(terms) - 1, allow_unused=True
            )
            for acc, part in zip(grads[i], parts):
                if part is not None:
                    acc.add_(part)
        loss = sum(float(r[0].detach()) for r in results) / len(results)  # logged: the mean
        # the ratio statistics do not depend on the advantage: any reward's are the same
        return loss, results[0][1], 0.0 if kl is None else float(kl.detach())

    def _apply_mgda(
        self,
        grads: list[list[torch.Tensor]],
        columns: list[str],
        stats: dict[str, float],
        share: float,
    ) -> None:
        """Average the per-reward gradients across processes, balance them, and leave the
        result (plus the KL term's gradient) in ``p.grad`` for the optimizer."""
        if self.world_size > 1:
            flat = torch.cat([g.flatten() for slot in grads for g in slot])
            torch.distributed.all_reduce(flat)
            flat /= self.world_size
            offset = 0
            for slot in grads:
                for g in slot:
                    g.copy_(flat[offset : offset + g.numel()].view_as(g))
                    offset += g.numel()
        k = len(columns)
        group = self.optimizer.param_groups[0]
        previous = group.get("mgda_alpha")
        result = mgda_direction(
            grads[:k],
            torch.tensor(previous, dtype=torch.float64) if previous is not None else None,
            self.config.advantage.mgda_ema,
        )
        group["mgda_alpha"] = result.alpha.tolist()
        extra = grads[k] if len(grads) > k else [None] * len(result.direction)
        for p, d, e in zip(self.policy.trainable_parameters(), result.direction, extra):
            p.grad = d if e is None else d + e
        for i, name in enumerate(columns):
            stats[f"mgda/alpha/{name}"] = float(result.alpha[i])  # the last update's
            stats[f"mgda/grad_norm/{name}"] += float(result.norms[i]) * share

    # ------------------------------------------------------------------ step metrics
    def _step_metrics(self, rewards: RewardBatch, adv: Advantages) -> dict[str, float]:
        m: dict[str, float] = dict(adv.noise_floor_kept)
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
