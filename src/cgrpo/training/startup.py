"""A trainer's start-up: check the run directory, build its parts, resume from a checkpoint.

A new run claims its directory (``run.json``, ``config.yaml``) once the config and the
directory are checked and before the model is built: loading a large model takes minutes,
and a run preempted meanwhile must be resumable (``--resume`` restarts it from step 0
with its config). An error while the model is built or checked (a rollout that does not
fit) undoes the claim, so a refused run leaves nothing behind. A resumed run rewrites its
config only after the overrides were checked against the checkpoint and it has loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from itertools import chain
from pathlib import Path
from typing import Any

import torch

from cgrpo.config.schema import ConfigError, to_dict
from cgrpo.config.train import Config, load_config
from cgrpo.data.skipping import BadItems, build_training_dataset
from cgrpo.grpo import make_weight_schedule
from cgrpo.grpo.noise_floor import resolve_noise_floors
from cgrpo.policies.base import Policy
from cgrpo.sampling import make_sigmas
from cgrpo.training.checkpoint import (
    MANIFEST,
    checkpoint_state,
    intact_checkpoints,
    latest_checkpoint,
    load_checkpoint,
)
from cgrpo.training.faults import fault_point
from cgrpo.training.logging import MetricsWriter, check_wandb
from cgrpo.training.rollout import check_rollout_fits, memory_bytes
from cgrpo.training.rundir import (
    check_resume_compatible,
    claim_for_new_run,
    mark_run_dir,
    missing_folders,
    resumable_without_checkpoint,
    start_run_dir,
    unclaim_run_dir,
    write_run_config,
)
from cgrpo.training.runs import build_policy_from_config
from cgrpo.training.scoring import build_rewards
from cgrpo.training.seeds import derive_seed
from cgrpo.training.writes import DiskFull

log = logging.getLogger("cgrpo.train")


class TrainerSetup:
    """The set-up of the :class:`~cgrpo.training.trainer.Trainer`: builds the policy,
    dataset, rewards, schedule, sigmas, optimizer, scheduler and metrics writer, and loads
    the newest intact checkpoint on resume."""

    config: Config
    run_dir: Path
    accelerator: Any
    device: torch.device
    is_main: bool
    step: int
    _resume: bool
    _saved: tuple[int, Path] | None
    _begin_update: Callable[[], None]  # registered as the optimizer's pre-step hook

    def _setup(self) -> None:
        """Build everything (see the class); a full disk names the last checkpoint too."""
        try:
            self._build()
        except DiskFull as e:
            last = latest_checkpoint(self.run_dir)
            e.message += f"; the last checkpoint is {last}" if last else "; no checkpoint yet"
            raise

    def _build(self) -> None:
        cfg = self.config
        check_wandb(cfg.logging.wandb)  # a missing extra stops before anything is written
        restart = resumed = False
        if self._resume and resumable_without_checkpoint(self.run_dir):
            # stopped before its first checkpoint (preempted during start-up or its first
            # steps): the same clean restart a new run gets, with the saved config
            self._resume, restart, resumed = False, True, True
        elif self._resume:  # nothing is written before the config is checked against it
            candidates = intact_checkpoints(self.run_dir)
            newest = next(candidates, None)
            if newest is not None:
                check_resume_compatible(load_config(newest / "config.yaml"), cfg)
        else:
            restart = claim_for_new_run(self.run_dir)
        created = missing_folders(self.run_dir)
        if not self._resume:  # claimed before the model loads (minutes for FLUX), so a run
            # preempted while it loads resumes; an error before training undoes the claim
            self.accelerator.wait_for_everyone()  # every process checked before any write
            if self.is_main:
                start_run_dir(self.run_dir, restart, resumed)
                write_run_config(cfg, self.run_dir)
        try:
            fault_point("setup.build")
            torch.manual_seed(derive_seed(cfg.seed, "init"))
            self.policy: Policy = build_policy_from_config(cfg, self.device, with_lora=True)
            check_rollout_fits(cfg.sampling, self.policy.latent_shape(), memory_bytes(self.device))
        except Exception:
            if not self._resume and not resumed and self.is_main:
                unclaim_run_dir(self.run_dir, created)
            raise
        self.dataset = build_training_dataset(cfg.data.name, cfg.data.options)
        if len(self.dataset) == 0:
            raise ValueError(f"dataset {cfg.data.name!r} has no examples")
        self.items = BadItems(self.dataset, cfg.data.max_bad_fraction)
        self.scorer = build_rewards(cfg.rewards, self.device, cfg.train.offload_rewards)
        trained = cfg.trained_rewards
        self.trained_columns = [c for c, s in self.scorer.columns.items() if s in trained]
        self.trained_columns.sort(key=lambda c: 0 if self.scorer.columns[c].role == "prompt" else 1)
        resolve_noise_floors(cfg.advantage, self.trained_columns)  # a bad floor stops here
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
                write_run_config(cfg, self.run_dir)
        self.metrics = (
            MetricsWriter(
                self.run_dir,
                cfg.logging.tensorboard,
                self.step if self._resume else None,
                wandb=cfg.logging.wandb,
                config=to_dict(cfg),
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
            self.items.restore(checkpoint_state(path).get("bad_items"))
            log.info("resumed from %s at step %d", path, self.step)
            return
        raise FileNotFoundError(f"--resume: no intact checkpoint in {self.run_dir / 'checkpoints'}")
