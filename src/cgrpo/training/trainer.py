"""The GRPO trainer: one loop for every backend, in four named stages.

Each training step:

1. **sample** -- ``groups_per_step`` (prompt, reference) examples, G samples each, all in
   one batched SDE rollout (chunked by ``sampling.chunk_size``), same start noise per group;
2. **score** -- every configured reward scores the decoded images (named columns);
3. **advantages** -- per-reward group z-scores, reward weights from the schedule (TDW)
   taken at each trained step's real denoising index, combined by the strategy (SARS);
4. **update** -- clipped policy-gradient loss on the trained (sample, step) pairs,
   accumulated over micro-batches, optional KL to the frozen base, AdamW on the LoRA.

Multi-process runs go through accelerate (``accelerate launch -m cgrpo.cli train ...``):
each process samples its own whole groups, gradients are averaged by DDP. Every random draw
of a group (start noise, SDE noise, trained steps, mini-batch slots) is keyed by the group's
position in the step's global list of groups, never by the process, so W processes with
``groups_per_step = g`` train the same LoRA as one process with ``groups_per_step = W * g``
(up to float rounding; README "Many processes" lists where that does not hold).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import torch

from cgrpo.config.schema import ConfigError
from cgrpo.config.train import Config, RewardSpec, load_config, save_config
from cgrpo.data.base import Example, build_dataset
from cgrpo.evaluation.harness import PolicyEvaluation
from cgrpo.evaluation.heldout import (
    HeldOutCheck,
    before_after_grid,
    held_out_summary,
    held_out_table,
)
from cgrpo.grpo import (
    combine_advantages,
    gaussian_kl,
    group_normalize,
    make_weight_schedule,
    ppo_clip_loss,
    sde_step,
    select_timesteps_random,
    select_timesteps_window,
    sliding_window,
)
from cgrpo.policies.base import Policy
from cgrpo.rewards.base import Reward, RewardBatch, RewardContext, ScoreRequest, build_reward
from cgrpo.sampling import initial_noise, make_sigmas, merged_lora, sample_trajectory
from cgrpo.training.checkpoint import (
    MANIFEST,
    intact_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    save_adapter_atomically,
    save_checkpoint,
)
from cgrpo.training.faults import fault_point
from cgrpo.training.logging import MetricsWriter, group_grid
from cgrpo.training.rollout import Advantages, Rollout, check_rollout_fits, memory_bytes
from cgrpo.training.rundir import (
    check_resume_compatible,
    claim_for_new_run,
    mark_run_dir,
    start_run_dir,
)
from cgrpo.training.runs import build_policy_from_config
from cgrpo.training.signals import StopRequested, StopSignals, exit_code
from cgrpo.training.stopping import (
    Interrupted,
    TrainingFailed,
    failure_cause,
    resume_command,
)

log = logging.getLogger("cgrpo.train")


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (stable across processes and Python versions)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator_for(*parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


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


@dataclass
class ScoredRewards:
    """The rewards of a run, built once: objects, the spec of each used column.

    With ``offload_to`` set, the reward models wait on the CPU and move to that device only
    to score (one reward at a time), so they hold no accelerator memory while the policy
    samples and updates.
    """

    rewards: dict[str, Reward]
    columns: dict[str, RewardSpec]  # column name -> spec (trained and monitored)
    offload_to: torch.device | None = None

    def score(self, request: ScoreRequest) -> RewardBatch:
        out: dict[str, torch.Tensor] = {}
        for reward in self.rewards.values():
            if self.offload_to is None:
                out.update(reward.score(request))
                continue
            reward.to(self.offload_to)
            try:
                out.update(reward.score(request))
            finally:
                reward.offload()
        return RewardBatch({c: out[c] for c in self.columns})


def build_rewards(
    specs: list[RewardSpec], device: torch.device, offload: bool = False
) -> ScoredRewards:
    """Instantiate each configured reward once and map the used columns to their specs."""
    rewards: dict[str, Reward] = {}
    columns: dict[str, RewardSpec] = {}
    context = RewardContext(device=device)
    home = torch.device("cpu") if offload else device
    for spec in specs:
        if spec.name not in rewards:
            try:
                rewards[spec.name] = build_reward(spec.name, spec.options, context).to(home)
            except ValueError as e:
                if isinstance(e, ConfigError):
                    raise
                raise ConfigError(f"rewards.{spec.name}", spec.name, str(e)) from None
        reward = rewards[spec.name]
        if spec.column is not None:
            if spec.column not in reward.columns:
                raise ConfigError(
                    f"rewards.{spec.name}.column",
                    spec.column,
                    f"choose from {', '.join(reward.columns)}",
                )
            columns[spec.column] = spec
        elif len(reward.columns) == 1:
            columns[reward.columns[0]] = spec
        else:
            raise ConfigError(
                f"rewards.{spec.name}.column",
                None,
                f"reward returns several columns; choose from {', '.join(reward.columns)}",
            )
    return ScoredRewards(rewards, columns, device if offload else None)


class Trainer:
    """Runs GRPO training for a :class:`~cgrpo.config.train.Config` into ``run_dir``."""

    def __init__(
        self, config: Config, run_dir: str | Path, *, resume: bool = False, accelerator: Any = None
    ) -> None:
        from accelerate import Accelerator

        config.validate_for_training()
        self.config = config
        self.run_dir = Path(run_dir)
        self.accelerator = accelerator or Accelerator(
            mixed_precision=config.train.mixed_precision,
            cpu=not torch.cuda.is_available(),
        )
        self.device = self.accelerator.device
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        self.step = 0
        self._saved: tuple[int, Path] | None = None  # (step, path) of the last checkpoint
        self._stage = "start-up"  # named in the message when a run stops early
        self._signals: StopSignals | None = None  # active inside train()
        self._mid_update = False  # an optimizer step of the current step has run
        self._resume = resume
        self._held_out: HeldOutCheck | None = None
        self._eval_results: dict[str, PolicyEvaluation] = {}
        self._setup()

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        cfg = self.config
        if self._resume:  # nothing is written before the config is checked against it
            candidates = intact_checkpoints(self.run_dir)
            newest = next(candidates, None)
            if newest is not None:
                check_resume_compatible(load_config(newest / "config.yaml"), cfg)
        else:
            restart = claim_for_new_run(self.run_dir)
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        self.policy: Policy = build_policy_from_config(cfg, self.device, with_lora=True)
        check_rollout_fits(cfg.sampling, self.policy.latent_shape(), memory_bytes(self.device))
        if not self._resume:
            self.accelerator.wait_for_everyone()  # every process checked before any write
            if self.is_main:
                start_run_dir(self.run_dir, restart)
                save_config(cfg, self.run_dir / "config.yaml")
        self.dataset = build_dataset(cfg.data.name, cfg.data.options, "train")
        if len(self.dataset) == 0:
            raise ValueError(f"dataset {cfg.data.name!r} has no examples")
        self.scorer = build_rewards(cfg.rewards, self.device, cfg.train.offload_rewards)
        trained = cfg.trained_rewards
        self.trained_columns = [c for c, s in self.scorer.columns.items() if s in trained]
        self.trained_columns.sort(key=lambda c: 0 if self.scorer.columns[c].role == "prompt" else 1)
        sched_params: dict[str, float] = {}
        if cfg.advantage.schedule == "fixed":
            sched_params = {"w_prompt": cfg.advantage.fixed_prompt_weight}
        elif cfg.advantage.schedule == "linear":
            sched_params = {"start": cfg.advantage.linear_start, "end": cfg.advantage.linear_end}
        self.schedule = make_weight_schedule(cfg.advantage.schedule, **sched_params)
        self.sigmas = make_sigmas(
            self.policy, cfg.sampling.num_steps, cfg.sampling.shift, cfg.sampling.dynamic_shift
        )

        params = self.policy.trainable_parameters()
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.train.lr, betas=cfg.train.betas, weight_decay=cfg.train.weight_decay
        )
        self.optimizer.register_step_pre_hook(lambda *_: self._begin_update())
        warm = cfg.train.warmup_steps
        # The LR is a function of the training step. The scheduler is not passed through
        # accelerator.prepare: accelerate's wrapper steps a prepared scheduler once per
        # process on every call (it assumes the batch grows with the process count), which
        # ran the warm-up W times too fast on W processes.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0
        )
        self.model, self.optimizer = self.accelerator.prepare(self.policy, self.optimizer)
        if self._resume:
            self._load_checkpoint(chain([newest], candidates) if newest else ())
            if self.is_main:
                mark_run_dir(self.run_dir)
                save_config(cfg, self.run_dir / "config.yaml")
        self.metrics = (
            MetricsWriter(
                self.run_dir, cfg.logging.tensorboard, self.step if self._resume else None
            )
            if self.is_main
            else None
        )
        if self.metrics is not None and self._resume:
            self.metrics.truncate_after(self.step)
        fault_point("setup")

    def _load_checkpoint(self, candidates: Iterable[Path]) -> None:
        """Resume from the first of the intact ``candidates`` (newest first) that loads; one
        without a manifest that fails to load counts as damaged."""
        for path in candidates:
            check_resume_compatible(load_config(path / "config.yaml"), self.config)
            try:
                self.step = load_checkpoint(path, self.policy, self.optimizer, self.scheduler)
            except Exception as e:
                if (path / MANIFEST).is_file():
                    detail = " ".join(str(e).split())[:300]
                    raise ConfigError(
                        "model",
                        self.config.model.backend,
                        f"checkpoint {path.name} does not fit this model ({detail})",
                    ) from None
                log.warning("skipping unreadable checkpoint %s: %s", path.name, e)
                continue
            self._saved = (self.step, path)
            log.info("resumed from %s at step %d", path, self.step)
            return
        raise FileNotFoundError(f"--resume: no intact checkpoint in {self.run_dir / 'checkpoints'}")

    # ------------------------------------------------------------------ stage 1: sample
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
            out.append(self.dataset[int(perm[offset])])
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

    # ------------------------------------------------------------------ stage 2: score
    def score(self, rollout: Rollout) -> RewardBatch:
        return self.scorer.score(rollout.score_request())

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

    # ------------------------------------------------------------------ the loop
    def train_step(self, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        rollout = self.sample(step)
        t1 = time.perf_counter()
        rewards = self.score(rollout)
        t2 = time.perf_counter()
        adv = self.advantages(rollout, rewards, step)
        stats = self.update(rollout, adv, step)
        t3 = time.perf_counter()
        metrics = self._step_metrics(rewards, adv)
        metrics.update(stats)
        metrics.update(
            {
                "time/sample": t1 - t0,
                "time/score": t2 - t1,
                "time/update": t3 - t2,
                "time/step": t3 - t0,
            }
        )
        self._last_rollout = (rollout, rewards)
        return metrics

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

    def train(self) -> dict[str, Any]:
        """Run to ``train.steps``; returns the summary (held-out rewards before/after).

        SIGINT or SIGTERM in any stage, or a fault :func:`failure_cause` can name, saves a
        checkpoint of the completed steps and raises :class:`Stopped` with one line for
        the user; any other error saves it too, then propagates.
        """
        with StopSignals(defer=self.world_size > 1) as signals:
            self._signals = signals
            try:
                return self._run_stages()
            except BaseException as error:
                raise self._stopped(error) from None
            finally:
                self._signals = None

    def _run_stages(self) -> dict[str, Any]:
        cfg = self.config
        summary: dict[str, Any] = {"run_dir": str(self.run_dir)}
        if cfg.eval.before_after and self.step == 0:
            self._stage = "the before-training evaluation"
            fault_point("eval.before")
            summary["before"] = self.evaluate(adapter=False)
            self._write_json("eval_before.json", summary["before"])
        elif cfg.eval.before_after and (self.run_dir / "eval_before.json").is_file():
            summary["before"] = json.loads((self.run_dir / "eval_before.json").read_text())
        self._stage = "training"
        bar = None
        if cfg.logging.progress and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=cfg.train.steps,
                initial=self.step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
            )
        last: dict[str, float] = {}
        try:
            while self.step < cfg.train.steps:
                fault_point("step")
                metrics = self.train_step(self.step)
                self.step += 1
                self._mid_update = False
                last = metrics
                self._after_step(metrics, bar)
                if self._signals is not None:  # a signal held since the update lands here
                    self._signals.release("update")
                self._stop_together()
        finally:
            if bar is not None:
                bar.close()
        self._stage = "the final save"
        self._checkpoint()  # every process: it holds a barrier
        self._check_replicas_in_sync()
        if self.is_main:
            save_adapter_atomically(self.policy, self.run_dir / "final")
        if cfg.eval.before_after:
            self._stage = "the after-training evaluation"
            fault_point("eval.after")
            summary["after"] = self.evaluate(adapter=True)
            self._write_json("eval_after.json", summary["after"])
            if self.is_main:
                self._save_before_after_grid()
        summary["last_metrics"] = last
        if self.is_main:
            self._write_summary(summary)
        if self.metrics is not None:
            self.metrics.close()
        return summary

    # ------------------------------------------------------------------ stopping early
    def _begin_update(self) -> None:
        """Optimizer pre-step hook: until the step is counted the weights hold part of it,
        so no checkpoint may be written, and signals wait until its metrics are logged."""
        self._mid_update = True
        if self._signals is not None:
            self._signals.hold("update")

    def _stop_together(self) -> None:
        """Multi-process: stop at this step boundary if any process got a signal."""
        if self.world_size == 1 or self._signals is None:
            return
        flag = torch.tensor([self._signals.pending or 0], device=self.device)
        signum = int(self.accelerator.gather(flag).max())
        if signum:
            self._signals.pending = None
            raise StopRequested(signum)

    def _stopped(self, error: BaseException) -> BaseException:
        """Save a checkpoint of the completed steps after ``error``; what to raise next."""
        if self._signals is not None:
            self._signals.defer = True  # a second signal must not cut the save short
        interrupted = isinstance(error, KeyboardInterrupt)
        cause = None if interrupted else failure_cause(error)
        saved = self._save_after_stop(barrier=interrupted)
        where = f"at step {self.step} of {self.config.train.steps}, during {self._stage}"
        if interrupted:
            name = getattr(error, "name", "SIGINT")
            return Interrupted(
                f"interrupted ({name}) {where}; {saved}; {resume_command(self.run_dir)}",
                exit_code(error),
            )
        if cause is None:  # a bug or an unforeseen fault: keep its traceback
            log.error("training failed %s; %s; %s", where, saved, resume_command(self.run_dir))
            return error
        return TrainingFailed(
            f"training stopped {where}: {cause}; {saved}; {resume_command(self.run_dir)}"
        )

    def _save_after_stop(self, barrier: bool) -> str:
        """Checkpoint the completed steps if the weights hold exactly those; say what is
        on disk. Without ``barrier`` only the main process writes (the others may be
        stuck in a collective operation)."""
        if self._mid_update:
            reason = f"step {self.step + 1} stopped half-way through its update"
        else:
            try:
                path = self._checkpoint(barrier=barrier)
                return f"checkpoint saved to {path}" if path else "checkpoint saved"
            except OSError as e:
                reason = f"no new checkpoint ({e})"
        last = latest_checkpoint(self.run_dir) if self.is_main else None
        return f"{reason}; the last checkpoint is {last}" if last else f"{reason}; no checkpoint"

    def _after_step(self, metrics: dict[str, float], bar: Any) -> None:
        cfg = self.config.logging
        step = self.step
        if self.metrics is not None and (
            step % cfg.log_every == 0 or step == self.config.train.steps
        ):
            self.metrics.write(step, metrics)
        if bar is not None:
            shown = {
                k.split("/")[1]: f"{v:.3f}"
                for k, v in metrics.items()
                if k.startswith("reward/") and k.endswith("/mean")
            }
            bar.set_postfix(shown, refresh=False)
            bar.update(1)
        if self.is_main and cfg.sample_every and step % cfg.sample_every == 0:
            self._save_grid(step)
        if (
            cfg.checkpoint_every
            and step % cfg.checkpoint_every == 0
            and step < self.config.train.steps
        ):
            self._checkpoint()

    def close(self) -> None:
        """Leave the process group cleanly (an open gloo group can abort at interpreter exit)."""
        if self.world_size > 1 and torch.distributed.is_initialized():
            self.accelerator.wait_for_everyone()
            torch.distributed.destroy_process_group()

    def _check_replicas_in_sync(self) -> None:
        """Fail loudly if processes hold different LoRA weights (gradients not synced)."""
        if self.world_size == 1:
            return
        flat = torch.cat([p.detach().float().flatten() for p in self.policy.trainable_parameters()])
        stats = torch.stack([flat.sum(), flat.square().sum()]).to(self.device)[None]
        everyone = self.accelerator.gather(stats).cpu()
        if not torch.allclose(everyone, everyone[:1].expand_as(everyone), rtol=1e-5, atol=1e-7):
            raise RuntimeError(
                "LoRA weights differ between processes: gradients were not "
                f"synchronised (per-process sums {everyone[:, 0].tolist()})"
            )

    def _checkpoint(self, barrier: bool = True) -> Path | None:
        """Save the state after ``self.step`` completed steps (unless already saved)."""
        if barrier:
            self.accelerator.wait_for_everyone()
        if not self.is_main:
            return None
        if self._saved is not None and self._saved[0] == self.step:
            return self._saved[1]
        with self._signals.held() if self._signals is not None else nullcontext():
            path = save_checkpoint(
                self.run_dir,
                self.step,
                self.policy,
                self.optimizer,
                self.scheduler,
                self.config,
                self.config.logging.keep_checkpoints,
            )
        self._saved = (self.step, path)
        return path

    def _save_grid(self, step: int, max_groups: int = 4) -> None:
        rollout, rewards = self._last_rollout
        g = rollout.group_size
        n = min(max_groups, len(rollout) // g)
        labels = []
        for k in range(n * g):
            parts = [f"{name[:10]} {float(v[k]):.2f}" for name, v in rewards.columns.items()]
            labels.append("\n".join(parts))
        grid = group_grid(
            [rollout.examples[i * g].references[0] for i in range(n)],
            rollout.images[: n * g],
            g,
            [rollout.examples[i * g].prompt for i in range(n)],
            labels,
        )
        folder = self.run_dir / "samples"
        folder.mkdir(exist_ok=True)
        grid.save(folder / f"step-{step:06d}.png")

    # ------------------------------------------------------------------ held-out check
    def evaluate(self, adapter: bool = True) -> dict[str, Any]:
        """Held-out check through the evaluation harness (:mod:`cgrpo.evaluation.heldout`).

        ``adapter=False`` scores the base model (the adapter switched off). Writes the
        per-item records to ``heldout/<before|after>/`` and returns the means.
        """
        phase = "after" if adapter else "before"
        if self._held_out is None:
            self._held_out = HeldOutCheck.from_config(
                self.config,
                list(self.scorer.rewards.values()),
                generator_for(self.config.eval.seed, "eval-items"),
                offload_to=self.scorer.offload_to,
            )
        ctx = nullcontext() if adapter else self.policy.adapter_disabled()
        self.policy.eval()
        with ctx:
            result = self._held_out.run(self.policy)
        self._eval_results[phase] = result
        if self.is_main:
            self._held_out.save(self.run_dir, phase, result)
        return held_out_summary(result.records, phase)

    def _save_before_after_grid(self) -> None:
        """``before_after.png``: reference | base | trained, for held-out items."""
        if self._held_out is None or not {"before", "after"} <= self._eval_results.keys():
            return
        grid = before_after_grid(
            self._held_out.items,
            self._eval_results["before"],
            self._eval_results["after"],
            list(self.scorer.columns),
        )
        grid.save(self.run_dir / "before_after.png")

    def _write_json(self, name: str, data: Any) -> None:
        if self.is_main:
            (self.run_dir / name).write_text(json.dumps(data, indent=2))

    def _write_summary(self, summary: dict[str, Any]) -> None:
        lines = [
            f"# cgrpo run `{self.run_dir.name}`",
            "",
            f"- backend: `{self.config.model.backend}`, data: `{self.config.data.name}`",
            f"- steps: {self.step}, group size {self.config.sampling.group_size}, "
            f"{self.config.sampling.groups_per_step} groups/step, "
            f"strategy `{self.config.advantage.strategy}`, "
            f"schedule `{self.config.advantage.schedule}`",
            "",
        ]
        table = held_out_table(self.run_dir)
        if table:
            lines += ["## Held-out rewards (deterministic sampling)", "", table, ""]
        if (self.run_dir / "before_after.png").is_file():
            lines += ["![held-out: reference | base | trained](before_after.png)", ""]
        lines += [
            "## Files",
            "",
            "- `metrics.jsonl`, `tensorboard/`: per-step metrics",
            "- `samples/`: reference | group grids",
            "- `final/`: trained adapter",
            "- `checkpoints/`: resumable checkpoints",
            "",
        ]
        (self.run_dir / "summary.md").write_text("\n".join(lines))
