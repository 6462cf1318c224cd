"""Timing one configuration of the FLUX step (``flux_step.py`` runs the sweep).

Each method times one thing on a :class:`State` (the model and inputs at one LoRA rank) and
returns a row: seconds, the projection to the whole step, TFLOP/s, MFU, peak memory, and
what must agree with the plain path.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from flux_parts import (
    FULL_MODEL,
    TINY_MODEL,
    Rollout,
    Timer,
    adamw,
    autocast,
    backward_pairs,
    build_policy,
    random_condition,
    sample_per_sample,
    set_checkpointing,
    step_flops,
    step_noises,
    train_pairs,
)


@dataclass
class State:
    """The model and the inputs of one LoRA rank."""

    rank: int
    policy: object
    optimizer: object
    rollout: Rollout  # random latents, old log-probs of the timed pairs
    noise: torch.Tensor
    flops: dict
    n_trained: int


@dataclass
class Measure:
    """Timing at the settings ``s`` (``flux_settings.Settings``) on ``device``."""

    s: Any
    device: torch.device
    merge_s: dict[int, float] = field(default_factory=dict)  # rank -> enter + leave merged_lora

    def __post_init__(self) -> None:
        self.timer = Timer(self.device)

    def mfu(self, flops: float, seconds: float) -> float | None:
        if self.device.type != "cuda" or not seconds:
            return None
        return flops / seconds / (self.s.peak_tflops * 1e12)

    def build(self, rank: int) -> State:
        """The random model with a fresh rank-``rank`` LoRA and its AdamW state, the group's
        condition and noise, and a rollout of random latents whose timed pairs carry old
        log-probs from these weights."""
        from cgrpo.grpo import num_trained_timesteps, select_timesteps_random, sigma_schedule

        s = self.s
        model = TINY_MODEL if s.tiny else FULL_MODEL
        policy = build_policy(model, s.policy_options(), rank, s.lora_targets, self.device, s.seed)
        cond = random_condition(policy, s.text_tokens, s.ref_tokens, s.group, s.seed + 1)
        sigmas = sigma_schedule(s.steps, 3.0).to(self.device)
        shape = (s.group, *policy.latent_shape())
        noise = torch.randn(shape[1:], generator=torch.Generator().manual_seed(s.seed + 2))
        noise = noise.expand(shape).contiguous().to(self.device)  # one noise per group
        gen = torch.Generator().manual_seed(s.seed + 3)
        latents = torch.randn(s.group, s.steps + 1, *shape[1:], generator=gen).to(self.device)
        timesteps = select_timesteps_random(
            s.steps, s.train_fraction, s.group, generator=torch.Generator().manual_seed(s.seed + 4)
        )
        advantages = torch.randn(s.group, generator=torch.Generator().manual_seed(s.seed + 5))
        rollout = Rollout(
            cond, latents, torch.zeros(s.group, s.steps), sigmas, timesteps, advantages, s.eta
        )
        self._old_log_probs(policy, rollout)
        flops = step_flops(policy.denoiser, policy.latent_shape()[0] + s.ref_tokens, s.text_tokens)
        state = State(
            rank,
            policy,
            adamw(policy),
            rollout,
            noise,
            flops,
            num_trained_timesteps(s.steps, s.train_fraction),
        )
        return state

    def _old_log_probs(self, policy, r: Rollout) -> None:
        """Old log-probs of the timed pairs from the current weights (so ratio = 1 and no
        pair is clipped), ``chunk`` pairs per no-grad forward."""
        from cgrpo.grpo import sde_step

        pairs = r.pairs()[: self.s.timed_pairs]
        policy.eval()
        with torch.no_grad(), autocast(self.device, self.s.autocast):
            for start in range(0, len(pairs), max(self.s.chunks)):
                chunk = pairs[start : start + max(self.s.chunks)]
                rows = torch.tensor([p[0] for p in chunk])
                step = r.timesteps[rows, torch.tensor([p[1] for p in chunk])]
                x = r.latents[rows, step]
                v = policy(x, r.sigmas[step], r.cond.select(rows))
                res = sde_step(
                    v, x, r.sigmas, step.to(x.device), r.eta, prev_sample=r.latents[rows, step + 1]
                )
                r.log_probs[rows, step] = res.log_prob.float().cpu()

    # ------------------------------------------------------------------ training
    def time_training(self, st: State, micro_batch: int, fraction: float) -> dict:
        """Time ``timed_pairs`` pairs (first micro-batch untimed) at one config."""
        s, policy, r = self.s, st.policy, st.rollout
        row = {"rank": st.rank, "micro_batch": micro_batch, "checkpointing": fraction}
        pairs = r.pairs()[: s.timed_pairs]
        amp = autocast(self.device, s.autocast)
        set_checkpointing(policy, fraction)
        policy.train()
        policy.zero_grad(set_to_none=True)
        try:
            self.timer.reset_peak()
            t_warm = self.timer.now()
            backward_pairs(policy, r, pairs[:micro_batch], micro_batch, amp, len(pairs))
            t0 = self.timer.now()
            row["warmup_s"] = t0 - t_warm

            def over() -> bool:
                return self.timer.now() - t0 > s.config_budget_s

            done = backward_pairs(
                policy, r, pairs[micro_batch:], micro_batch, amp, len(pairs), stop=over
            )
            seconds = self.timer.now() - t0
        except torch.OutOfMemoryError:
            policy.zero_grad(set_to_none=True)
            self.timer.free()
            return {**row, "status": "out of memory"}
        finally:
            policy.eval()
        if done.pairs == 0:  # a single micro-batch: time the warm-up
            done.pairs, seconds = micro_batch, row["warmup_s"]
        per_pair = seconds / done.pairs
        row.update(
            status="ok",
            pairs_timed=done.pairs,
            s_per_pair=per_pair,
            update_s=per_pair * s.group * st.n_trained,
            tflops=st.flops["train"] / per_pair / 1e12,
            mfu=self.mfu(st.flops["train"], per_pair),
            peak_gib=self.timer.peak_gib(),
            ratio_dev=done.ratio_dev,
        )
        if done.pairs + micro_batch >= len(pairs):  # every timed pair ran: comparable grads
            row["grad_norm"] = _grad_norm(policy)
        return row

    # ------------------------------------------------------------------ sampling
    def time_sampling(self, st: State, chunk: int, merged: bool) -> tuple[dict, object]:
        """Time up to ``timed_steps`` sampler steps of the group after two one-step runs
        (warm-up, then the estimate that sizes the timed run)."""
        from cgrpo.sampling import merged_lora, sample_trajectory

        s, policy = self.s, st.policy
        row = {"rank": st.rank, "loop": "batched", "chunk": chunk, "merged": merged}
        merge_s = self.merge_seconds(st) if merged else 0.0

        def run(k: int):
            with merged_lora(policy) if merged else nullcontext():
                return sample_trajectory(
                    policy,
                    st.rollout.cond,
                    st.noise,
                    st.rollout.sigmas[: k + 1],
                    noise_level=s.eta,
                    generator=torch.Generator().manual_seed(s.seed + 6),
                    chunk_size=chunk,
                )

        policy.eval()
        try:
            _, row["warmup_s"], _ = self.timer.run(lambda: run(1))
            traj, seconds, peak = self.timer.run(lambda: run(1))
            k = max(1, min(s.timed_steps, int(s.config_budget_s / max(seconds, 1e-9))))
            if k > 1:
                traj, seconds, peak = self.timer.run(lambda: run(k))
        except torch.OutOfMemoryError:
            self.timer.free()
            return {**row, "status": "out of memory"}, None
        # merge_s is timed apart; on a busy CPU it can exceed the whole timed run, and the
        # difference is noise: then count the timed run alone rather than divide by zero
        per_step = (seconds - merge_s if seconds > merge_s else seconds) / k
        flops = (st.flops["forward"] - (st.flops["lora"] if merged else 0.0)) * s.group
        row.update(
            status="ok",
            steps_timed=k,
            s_per_step=per_step,
            sampling_s=per_step * s.steps + merge_s,
            tflops=flops / per_step / 1e12,
            mfu=self.mfu(flops, per_step),
            peak_gib=peak,
        )
        return row, traj

    def merge_seconds(self, st: State) -> float:
        """Entering and leaving ``merged_lora`` once (once per training step)."""
        from cgrpo.sampling import merged_lora

        if st.rank not in self.merge_s:

            def enter_and_leave():
                with merged_lora(st.policy):
                    pass

            self.merge_s[st.rank] = self.timer.run(enter_and_leave)[1]
        return self.merge_s[st.rank]

    def recomputed_log_prob_dev(self, st: State, traj, chunk: int) -> float:
        """Max ``|log-prob recomputed by the update - log-prob at sampling|`` over the sampled
        transitions of ``traj``: what the first update's ratio sees. The update recomputes
        with the adapter unmerged, under its autocast, in micro-batches; sampling ran with
        this config's LoRA handling, without autocast, in chunks."""
        from cgrpo.grpo import sde_step

        s, policy, cond = self.s, st.policy, st.rollout.cond
        sigmas = traj.sigmas.to(self.device)
        dev = 0.0
        policy.eval()
        with torch.no_grad(), autocast(self.device, s.autocast):
            for i in range(sigmas.shape[0] - 1):
                for start in range(0, s.group, chunk):
                    rows = slice(start, min(start + chunk, s.group))
                    x = traj.latents[rows, i]
                    v = policy(x, sigmas[i].expand(x.shape[0]), cond.select(rows))
                    lp = sde_step(v, x, sigmas, i, s.eta, prev_sample=traj.latents[rows, i + 1])
                    diff = (lp.log_prob.float().cpu() - traj.log_probs[rows, i]).abs().max()
                    dev = max(dev, float(diff))
        return dev

    def time_per_sample_sampling(self, st: State, batched) -> dict:
        """The reference loop (batch 1) on the first two samples, for as many steps as the
        batched run ``batched`` timed; its latents and log-probs against that run's rows of
        the same samples (same noise and SDE draws)."""
        s, policy = self.s, st.policy
        n = min(2, s.group)
        row = {"rank": st.rank, "loop": "per-sample", "chunk": 1, "merged": False}
        k = batched.sigmas.shape[0] - 1 if batched is not None else 1
        sigmas = st.rollout.sigmas[: k + 1]
        xi = step_noises((s.group, *policy.latent_shape()), k, s.seed + 6)

        def run():
            with torch.no_grad():
                return sample_per_sample(policy, st.rollout.cond, st.noise[:n], sigmas, s.eta, xi)

        (latents, log_probs), seconds, peak = self.timer.run(run)
        per_image_step = seconds / (n * k)
        row.update(
            status="ok",
            steps_timed=k,
            s_per_step=per_image_step * s.group,
            sampling_s=per_image_step * s.group * s.steps,
            tflops=st.flops["forward"] / per_image_step / 1e12,
            mfu=self.mfu(st.flops["forward"], per_image_step),
            peak_gib=peak,
        )
        if batched is not None:
            row["agreement"] = {
                "max_abs_diff_latent": float((latents - batched.latents[:n]).abs().max()),
                "max_abs_diff_log_prob": float((log_probs - batched.log_probs[:n]).abs().max()),
            }
        return row

    # ------------------------------------------------------------------ whole steps
    def full_step(self, st: State, train: dict, sample: dict) -> dict:
        from cgrpo.sampling import merged_lora, sample_trajectory

        s, policy = self.s, st.policy
        set_checkpointing(policy, train["checkpointing"])
        step = {key: train[key] for key in ("rank", "micro_batch", "checkpointing")}
        step.update(chunk=sample["chunk"], merged=sample["merged"])

        def sample_all():
            policy.eval()
            with merged_lora(policy) if sample["merged"] else nullcontext():
                return sample_trajectory(
                    policy,
                    st.rollout.cond,
                    st.noise,
                    st.rollout.sigmas,
                    noise_level=s.eta,
                    generator=torch.Generator().manual_seed(s.seed + 7),
                    chunk_size=sample["chunk"],
                )

        traj, t_sample, m_sample = self.timer.run(sample_all)
        r = st.rollout
        real = Rollout(
            r.cond, traj.latents, traj.log_probs, r.sigmas, r.timesteps, r.advantages, r.eta
        )
        amp = autocast(self.device, s.autocast)
        (done, norm), t_train, m_train = self.timer.run(
            lambda: train_pairs(policy, real, train["micro_batch"], amp, st.optimizer)
        )
        lora = st.flops["lora"] if sample["merged"] else 0.0
        sample_flops = (st.flops["forward"] - lora) * s.group * s.steps
        train_flops = st.flops["train"] * s.group * st.n_trained
        step.update(
            status="ok",
            sampling_s=t_sample,
            training_s=t_train,
            step_s=t_sample + t_train,
            sampling_peak_gib=m_sample,
            training_peak_gib=m_train,
            sampling_mfu=self.mfu(sample_flops, t_sample),
            training_mfu=self.mfu(train_flops, t_train),
            step_mfu=self.mfu(sample_flops + train_flops, t_sample + t_train),
            grad_norm=norm,
            first_update_ratio_dev=done.ratio_dev,
        )
        return step

    def per_sample_step(self, st: State) -> dict:
        """The reference structure measured end to end (same noise, draws and pairs)."""
        s, policy = self.s, st.policy
        set_checkpointing(policy, 1.0)
        xi = step_noises((s.group, *policy.latent_shape()), s.steps, s.seed + 7)

        def run():
            with torch.no_grad():
                return sample_per_sample(
                    policy, st.rollout.cond, st.noise, st.rollout.sigmas, s.eta, xi
                )

        (latents, log_probs), t_sample, _ = self.timer.run(run)
        r = st.rollout
        real = Rollout(r.cond, latents, log_probs, r.sigmas, r.timesteps, r.advantages, r.eta)
        amp = autocast(self.device, s.autocast)
        (_, norm), t_train, _ = self.timer.run(
            lambda: train_pairs(policy, real, 1, amp, st.optimizer)
        )
        return {
            "rank": st.rank,
            "sampling_s": t_sample,
            "training_s": t_train,
            "step_s": t_sample + t_train,
            "grad_norm": norm,
        }


def _grad_norm(policy) -> float:
    grads = [p.grad.float().norm() for p in policy.trainable_parameters() if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0
