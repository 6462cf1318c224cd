"""One Customized-GRPO step on a FLUX.1-dev-size transformer: a sweep of the speed levers.

The step at the paper's settings: a group of 12 samples from one (prompt, reference) pair,
25 SDE steps (dance, eta 0.4), a 512x512 target (1024 tokens) plus one 512x512 reference
(1024 tokens) and 512 text tokens; then the PPO update on a random 60% of the first 24
steps of every sample (14 per sample, 168 pairs), LoRA only, under bf16 autocast as the
presets' ``train.mixed_precision``. Weights are random (meta-device init, bf16), text and
reference embeddings random tensors: nothing is downloaded, no encoder runs.

One process, in this order, each phase written to ``--out`` (JSON + markdown) as it ends:

1. **training sweep** (LoRA rank ``--rank``, the presets' 512 at full size): micro-batch x
   gradient checkpointing (share of blocks recomputed: 1 = all, 0.5 = every second, 0 =
   off). Each config times ``--timed-pairs`` (sample, step) pairs after one untimed warm-up
   micro-batch and projects the whole update (time per pair x 168); peak memory includes
   the AdamW state. The same pairs in every config, so the gradient norms must agree
   (reported against the first config's).
2. **sampling sweep**: ``--chunks`` images per forward, LoRA unmerged / merged
   (``sampling.merge_lora``), and the per-sample loop (batch 1), each timing
   ``--timed-steps`` sampler steps of the group and projecting 25. The LoRA first gets a
   delta of 1% of its base weights (a fresh one is zero and merges exactly); each config's
   sampled log-probs are then recomputed as the update does (unmerged, autocast): the
   first update's ratio deviation. Per-sample vs batched latents and log-probs are compared.
3. **reward cost**: VAE decode of the group, DINOv2-base and a Qwen2-VL-7B-size HPSv3 on
   the 12 images (``reward_cost.py``).
4. **the step**, measured end to end at LoRA rank ``--step-rank`` (when it differs from
   ``--rank`` the model is rebuilt and the fastest configs re-timed): the fastest training
   and sampling configs whose peak plus the reward models' weights stays under
   ``--memory-limit-gib`` run the whole step (25 sampler steps, 168 pairs, AdamW step).
   The per-sample loop's step is projected from its rows (measured end to end with
   ``--per-sample-step``, the default for ``--tiny``).
5. **regional compile** (``--compile``) of the step's configs, if the budget allows.

Budget: ``--config-budget-s`` caps the timed part of one config (it then projects from what
it timed); a phase is skipped, and says so, when less than its estimate remains of
``--budget-s``. Out-of-memory configs are recorded as such and the sweep goes on.

Usage::

    python benchmarks/flux_step.py --out runs/bench              # full size, one GPU
    python benchmarks/flux_step.py --tiny --out /tmp/flux_tiny   # the same on a CPU, seconds

MFU = model FLOPs / time / ``--peak-tflops`` (dense bf16; 989 for an H100 SXM, the same
for an H200). Model FLOPs count every linear layer and attention matmul once per forward;
a training pair counts forward + activation-gradient backward (2x linear, 3x attention) +
the LoRA weight gradients; recomputation by checkpointing is not counted; merged sampling
counts no LoRA FLOPs.
"""

from __future__ import annotations

import datetime
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from flux_measure import Measure, State
from flux_parts import optimizer_step, parameter_gib, perturb_lora_, set_checkpointing
from flux_report import markdown
from flux_settings import Settings, parse_args

#: Before sampling, every LoRA gets a delta of this size relative to its base weights, so
#: that merged sampling shows its bf16 rounding (timings do not depend on it).
TRAINED_LORA = 0.01


@dataclass
class Sweep:
    """The phases in order, within the budget, each written to ``out`` as it ends."""

    s: Settings
    out: Path | None
    results: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.measure = Measure(self.s, torch.device(self.s.device))
        self.start = time.perf_counter()
        self.results.update(
            settings=asdict(self.s),
            environment=_environment(self.measure.device),
            pairs=None,
            training=[],
            sampling=[],
            skipped=[],
        )

    # ------------------------------------------------------------------ budget and output
    def remaining(self) -> float:
        return self.s.budget_s - (time.perf_counter() - self.start)

    def allow(self, what: str, estimate_s: float) -> bool:
        if self.remaining() >= estimate_s:
            return True
        self.results["skipped"].append(
            f"{what}: needs ~{estimate_s:.0f} s, {max(self.remaining(), 0):.0f} s left"
        )
        return False

    def config_estimate(self) -> float:
        return 2 * self.s.config_budget_s

    def save(self) -> None:
        self.results["elapsed_s"] = time.perf_counter() - self.start
        self.results["merge_s"] = {f"rank {r}": t for r, t in self.measure.merge_s.items()}
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "flux_step.json").write_text(json.dumps(self.results, indent=2))
        (self.out / "flux_step.md").write_text(markdown(self.results) + "\n")

    def build(self, rank: int) -> State:
        st = self.measure.build(rank)
        if self.measure.device.type == "cuda":  # the backend switched it off for training
            self.results["environment"]["cudnn_sdpa"] = torch.backends.cuda.cudnn_sdp_enabled()
        self.results["pairs"] = self.s.group * st.n_trained
        self.results.setdefault("models", {})[f"rank {rank}"] = {
            "base_gib": parameter_gib(st.policy, trainable=False),
            "lora_gib": parameter_gib(st.policy, trainable=True),
            "flops_per_image_step_tflop": {k: v / 1e12 for k, v in st.flops.items()},
        }
        return st

    # ------------------------------------------------------------------ sweeps
    def training_rows(self, st: State, configs: list[tuple[int, float]]) -> None:
        """Time each (micro-batch, checkpointing) config, then take one AdamW step (the LoRA
        leaves zero, as after any first step). Gradient norms of configs that ran every
        timed pair are compared with the first such one."""
        rows = []
        for mb, fraction in configs:
            if self.allow(f"training r{st.rank} mb {mb} ckpt {fraction}", self.config_estimate()):
                rows.append(self.measure.time_training(st, mb, fraction))
                self.results["training"].append(rows[-1])
                self.save()
        norms = [r["grad_norm"] for r in rows if "grad_norm" in r]
        for r in rows:
            if "grad_norm" in r:
                r["grad_rel_diff"] = abs(r["grad_norm"] - norms[0]) / max(norms[0], 1e-30)
        if st.policy.trainable_parameters()[0].grad is not None:
            timer = self.measure.timer
            _, seconds, _ = timer.run(lambda: optimizer_step(st.policy, st.optimizer))
            self.results.setdefault("optimizer_step_s", {})[f"rank {st.rank}"] = seconds
        set_checkpointing(st.policy, 0.0)

    def sampling_rows(self, st: State, configs: list[tuple[int, bool]]) -> None:
        """Time each (chunk, merged) config and the per-sample loop; then recompute each
        config's sampled log-probs as the update does (unmerged, autocast): how far from 1
        the first update's ratio starts."""
        trajectories = {}
        for chunk, merged in configs:
            what = f"sampling r{st.rank} chunk {chunk} merged {merged}"
            if self.allow(what, self.config_estimate()):
                row, trajectories[chunk, merged] = self.measure.time_sampling(st, chunk, merged)
                self.results["sampling"].append(row)
                self.save()
        if self.allow(f"per-sample sampling r{st.rank}", self.config_estimate()):
            unmerged = [t for (_, m), t in trajectories.items() if not m and t is not None]
            batched = unmerged[0] if unmerged else None
            self.results["sampling"].append(self.measure.time_per_sample_sampling(st, batched))
        for (chunk, merged), traj in trajectories.items():
            if traj is not None:
                row = next(
                    r
                    for r in self.results["sampling"][::-1]
                    if r.get("chunk") == chunk
                    and r.get("merged") == merged
                    and r["rank"] == st.rank
                )
                row["first_update_log_prob_dev"] = self.measure.recomputed_log_prob_dev(
                    st, traj, chunk
                )
        self.save()

    # ------------------------------------------------------------------ rewards
    def reward_cost(self) -> None:
        from reward_cost import reward_costs

        if not self.allow("reward cost", 4 * self.s.config_budget_s):
            return
        self.results["rewards"] = reward_costs(
            self.measure.timer,
            self.s.group,
            self.s.size,
            vae_batch=4,
            hps_text_tokens=self.s.hps_text_tokens,
            tiny=self.s.tiny,
        )
        self.save()

    def resident_reward_gib(self) -> float:
        rewards = self.results.get("rewards", {})
        return sum(rewards.get(k, {}).get("weights_gib", 0.0) for k in ("vae", "dino", "hpsv3"))

    # ------------------------------------------------------------------ the step
    def step_configs(self, st: State) -> None:
        """At the step's rank, when the sweep ran at another: the three fastest training
        configs of the sweep and the reference's (micro-batch 1, every block checkpointed);
        the fastest chunk merged and unmerged, and the per-sample loop."""
        if st.rank == self.s.rank:
            return
        swept = [r for r in self.results["training"] if r.get("status") == "ok"]
        fastest = sorted(swept, key=lambda r: r["update_s"])[:3]
        configs = [(r["micro_batch"], r["checkpointing"]) for r in fastest]
        if (1, 1.0) not in configs:
            configs.append((1, 1.0))
        self.training_rows(st, configs)
        sampled = [
            r
            for r in self.results["sampling"]
            if r.get("status") == "ok" and r["loop"] == "batched"
        ]
        if sampled:
            chunk = min(sampled, key=lambda r: r["sampling_s"])["chunk"]
            self.sampling_rows(st, [(chunk, False), (chunk, True)])

    def choose(self, rank: int) -> tuple[dict | None, dict | None]:
        """The fastest training and sampling configs timed at ``rank`` whose peak plus the
        reward models' weights stays under the memory limit."""
        limit = self.s.memory_limit_gib - self.resident_reward_gib()
        self.results["memory_limit_flux_gib"] = limit

        def fitting(kind: str) -> list[dict]:
            return [
                r
                for r in self.results[kind]
                if r.get("status") == "ok"
                and r["rank"] == rank
                and r.get("loop", "batched") == "batched"
                and (r["peak_gib"] or 0.0) <= limit
            ]

        train, sample = fitting("training"), fitting("sampling")
        return (
            min(train, key=lambda r: r["update_s"]) if train else None,
            min(sample, key=lambda r: r["sampling_s"]) if sample else None,
        )

    def the_step(self, st: State) -> None:
        self.step_configs(st)
        train, sample = self.choose(st.rank)
        if train is None or sample is None:
            self.results["skipped"].append(f"step: no config at rank {st.rank} fits the limit")
            return
        if self.allow("the measured step", 1.2 * (train["update_s"] + sample["sampling_s"])):
            try:
                self.results["step"] = self.measure.full_step(st, train, sample)
            except torch.OutOfMemoryError:
                self.measure.timer.free()
                self.results["step"] = {"status": "out of memory", **train}
        self.results["per_sample_projection"] = self.per_sample_projection(st.rank)
        self.save()

    def per_sample_projection(self, rank: int) -> dict | None:
        """The reference structure's step from its rows at ``rank``: batch-1 sampling and the
        update at micro-batch 1 with every block checkpointed."""

        def first(kind: str, match) -> dict | None:
            found = [
                r
                for r in self.results[kind]
                if r.get("status") == "ok" and r["rank"] == rank and match(r)
            ]
            return found[0] if found else None

        loop = first("sampling", lambda r: r["loop"] == "per-sample")
        train = first("training", lambda r: (r["micro_batch"], r["checkpointing"]) == (1, 1.0))
        if loop is None or train is None:
            return None
        return {
            "rank": rank,
            "sampling_s": loop["sampling_s"],
            "training_s": train["update_s"],
            "step_s": loop["sampling_s"] + train["update_s"],
        }

    def per_sample_step(self, st: State) -> None:
        projection = self.results.get("per_sample_projection") or {}
        if self.allow("measured per-sample step", 1.2 * projection.get("step_s", 0.0)):
            self.results["per_sample_step"] = self.measure.per_sample_step(st)
            self.save()

    # ------------------------------------------------------------------ regional compile
    def compiled(self, st: State) -> None:
        from cgrpo.policies.flux_blocks import compile_blocks

        step = self.results.get("step")
        if self.s.compile == "off" or not step or step.get("status") != "ok":
            return
        if not self.allow(f"regional compile ({self.s.compile})", self.s.compile_estimate_s):
            return
        out = self.results["compiled"] = {"backend": self.s.compile, "status": "compiling"}
        self.save()  # a compile the hard timeout cuts short still shows up
        try:
            compile_blocks(st.policy.denoiser, self.s.compile)
            m = self.measure
            out["training"] = m.time_training(st, step["micro_batch"], step["checkpointing"])
            out["sampling"] = m.time_sampling(st, step["chunk"], step["merged"])[0]
            out["status"] = "ok"
        except Exception as e:  # noqa: BLE001 - a compiler failure is a result too
            out["status"] = f"failed: {type(e).__name__}: {e}"[:500]
        self.save()

    # ------------------------------------------------------------------ all phases
    def run(self) -> dict:
        s = self.s
        st = self.build(s.rank)
        self.results["build_s"] = time.perf_counter() - self.start
        self.training_rows(st, [(mb, f) for mb in s.micro_batches for f in s.checkpointing])
        perturb_lora_(st.policy, TRAINED_LORA, s.seed + 8)
        self.sampling_rows(st, [(c, m) for c in s.chunks for m in (False, True)])
        if s.rewards:
            self.reward_cost()
        if s.step_rank != s.rank and self.allow(f"rebuild at rank {s.step_rank}", 60.0):
            del st  # the only reference: free the sweep's model before building the next
            self.measure.timer.free()
            st = self.build(s.step_rank)
            perturb_lora_(st.policy, TRAINED_LORA, s.seed + 8)
        self.the_step(st)
        if s.per_sample_step:
            self.per_sample_step(st)
        self.compiled(st)
        self.save()
        return self.results


def _environment(device: torch.device) -> dict:
    import diffusers

    env = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            device=torch.cuda.get_device_name(device),
            memory_gib=props.total_memory / 2**30,
            cuda=torch.version.cuda,
        )
    else:
        env["device"] = f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    return env


def main(argv: list[str] | None = None) -> dict:
    settings, out = parse_args(argv)
    results = Sweep(settings, out).run()
    print(markdown(results))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
