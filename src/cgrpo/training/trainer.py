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

This module holds the loop and stopping early; the rest of the :class:`Trainer` lives
beside it: start-up and resume (:mod:`cgrpo.training.startup`), stage 1, sampling
(:mod:`cgrpo.training.sample_stage`), the rewards (:mod:`cgrpo.training.scoring`), stages 3
and 4 (:mod:`cgrpo.training.update`),
sample grids, the held-out check and ``summary.md`` (:mod:`cgrpo.training.outputs`), and the
seeds every random draw derives from (:mod:`cgrpo.training.seeds`).
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from cgrpo.config.train import Config
from cgrpo.evaluation.harness import PolicyEvaluation
from cgrpo.evaluation.heldout import HeldOutCheck
from cgrpo.rewards.base import RewardBatch
from cgrpo.training.checkpoint import latest_checkpoint, save_adapter_atomically, save_checkpoint
from cgrpo.training.distributed import lost_peer, process_group_kwargs
from cgrpo.training.faults import fault_point
from cgrpo.training.outputs import RunOutputs
from cgrpo.training.rollout import Rollout
from cgrpo.training.sample_stage import RolloutSampling
from cgrpo.training.signals import StopRequested, StopSignals, exit_code
from cgrpo.training.startup import TrainerSetup
from cgrpo.training.stopping import Interrupted, failure, failure_cause, resume_command
from cgrpo.training.update import PolicyUpdate
from cgrpo.training.writes import quiet_writer_threads, writing

log = logging.getLogger("cgrpo.train")


class Trainer(TrainerSetup, RolloutSampling, PolicyUpdate, RunOutputs):
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
            kwargs_handlers=process_group_kwargs(config.train.collective_timeout),
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
        self._peer_lost = False  # a collective failed: another process is gone or silent
        self._resume = resume
        self._held_out: HeldOutCheck | None = None
        self._eval_results: dict[str, PolicyEvaluation] = {}
        self._setup()

    # ------------------------------------------------------------------ stage 2: score
    def score(self, rollout: Rollout) -> RewardBatch:
        return self.scorer.score(rollout.score_request())

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
                "data/bad_items": self.items.count,
            }
        )
        self._last_rollout = (rollout, rewards)
        return metrics

    def train(self) -> dict[str, Any]:
        """Run to ``train.steps``; returns the summary (held-out rewards before/after).

        SIGINT or SIGTERM in any stage, or a fault :func:`failure_cause` can name, saves a
        checkpoint of the completed steps and raises :class:`Stopped` with one line for
        the user; any other error saves it too, then raises ``TrainingCrashed`` caused by
        it (its traceback kept). Failures write their traceback to ``RUN/error.log``.
        """
        with StopSignals(defer=self.world_size > 1) as signals, quiet_writer_threads():
            self._signals = signals
            try:
                return self._run_stages()
            except BaseException as error:
                stopped = self._stopped(error)
                raise stopped from stopped.__cause__  # a bug's own error, with its traceback
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
        self._peer_lost = lost_peer(error) is not None
        cause = None if interrupted else failure_cause(error)
        saved = self._save_after_stop(barrier=interrupted)
        where = f"at step {self.step} of {self.config.train.steps}, during {self._stage}"
        if interrupted:
            name = getattr(error, "name", "SIGINT")
            return Interrupted(
                f"interrupted ({name}) {where}; {saved}; {resume_command(self.run_dir)}",
                exit_code(error),
            )
        if cause is None and not isinstance(error, Exception):  # SystemExit and the like
            return error
        return failure(error, cause, where, saved, self.run_dir, self.rank)

    def _save_after_stop(self, barrier: bool) -> str:
        """Checkpoint the completed steps if the weights hold exactly those; say what is
        on disk. Without ``barrier`` only the main process writes (the others may be
        stuck in a collective operation)."""
        if not self.is_main and not barrier:  # process 0 may be gone: say what is on disk
            last = latest_checkpoint(self.run_dir)
            return f"process 0 writes checkpoints; the last one is {last or 'none yet'}"
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
            with writing(
                self.metrics.path, "metrics", {"tensorboard": self.run_dir / "tensorboard"}
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
            if not self._peer_lost:  # a barrier would wait for a process that is gone
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
                state={"bad_items": self.items.state()},
            )
        self._saved = (self.step, path)
        return path
