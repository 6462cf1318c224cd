"""``cgrpo eval`` as a library call: settings in, a scored evaluation folder out.

:class:`EvalSettings` mirrors the command's flags (``None``: the default, which comes from
the ``protocol`` preset when one is named, else from the config). :func:`evaluate_benchmark`
resolves them, builds the benchmark items, writes ``eval.json`` (the settings; a folder
holding a different evaluation is refused) and runs
:func:`cgrpo.evaluation.resumable.run_evaluation`. User errors are
:class:`~cgrpo.config.schema.ConfigError` naming the flag.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cgrpo.config.schema import ConfigError
from cgrpo.evaluation.benchmarks.protocol import DREAMBENCH_METRICS, get_protocol

BENCHES = ("dreambench", "toybench")
META_KEYS = (
    "bench",
    "mode",
    "data",
    "images",
    "adapter",
    "checkpoint",
    "reference",
    "unique_token",
    "model",
    "world",
    "num_steps",
    "shift",
    "dynamic_shift",
    "base_seed",
    "shared_seed",
)
"""``eval.json`` fields that must agree for a rerun to add to an evaluation folder."""


@dataclass
class EvalSettings:
    """What to evaluate and how (one field per ``cgrpo eval`` flag; see its ``--help``)."""

    bench: str | None = None
    data: Path | None = None
    config: Path | None = None
    overrides: list[str] = field(default_factory=list)
    adapter: Path | None = None
    checkpoint: str = "final"
    images: Path | None = None
    metrics: list[str] | None = None
    metric_options: Path | None = None
    seeds: int | None = None
    seed: int | None = None
    shared_seed: bool | None = None
    out: Path | None = None
    reference: str | None = None
    unique_token: str = ""
    subjects: list[str] | None = None
    max_subjects: int | None = None
    num_steps: int | None = None
    shift: float | str | None = None
    guidance: float | None = None
    batch_size: int = 8
    device: str | None = None
    progress: bool = True
    protocol: str | None = None


@dataclass
class EvalOutcome:
    """Where the evaluation went and its records (one per pair and seed)."""

    out: Path
    records: list[dict[str, Any]]


def with_protocol(settings: EvalSettings) -> EvalSettings:
    """``settings`` with every unset field that the named protocol fixes filled in."""
    if settings.protocol is None:
        return settings
    try:
        preset = get_protocol(settings.protocol)
    except ValueError as e:
        raise ConfigError("--protocol", settings.protocol, str(e)) from None
    fill = {
        "bench": preset.bench,
        "reference": preset.reference,
        "num_steps": preset.num_steps,
        "guidance": preset.guidance,
        "shift": preset.shift,
        "seeds": preset.seeds,
        "seed": preset.seed,
        "shared_seed": preset.shared_seed,
        "metrics": list(preset.metrics),
    }
    given = {k: v for k, v in fill.items() if getattr(settings, k) is None}
    return dataclasses.replace(settings, **given)


def _positive(value: int, flag: str) -> None:
    if value < 1:
        raise ConfigError(flag, value, "must be >= 1")


def load_eval_config(settings: EvalSettings) -> Any:
    """The train/backend config: ``--config``, else the adapter run's; None for neither."""
    from cgrpo.config.train import load_config

    if settings.config is not None:
        return load_config(settings.config, settings.overrides)
    if settings.adapter is not None:
        path = settings.adapter / "config.yaml"
        if not path.is_file():
            raise ConfigError(
                "--adapter",
                str(settings.adapter),
                "not a run directory (no config.yaml); pass --config too",
            )
        return load_config(path, settings.overrides)
    if settings.overrides:
        raise ConfigError("overrides", settings.overrides, "need --config or --adapter")
    return None


def load_metric_options(path: Path | None) -> dict[str, dict[str, Any]]:
    """A ``--metric-options`` YAML file: ``{metric: {option: value}}``."""
    from cgrpo.config.train import read_yaml

    if path is None:
        return {}
    data = read_yaml(path, "--metric-options")
    if not all(isinstance(v, dict | type(None)) for v in data.values()):
        raise ConfigError(
            "--metric-options",
            str(path),
            "must map metric names to option mappings, e.g. {dino: {path: ...}}",
        )
    return {str(k): dict(v or {}) for k, v in data.items()}


def select_subjects(available: list[str], settings: EvalSettings) -> set[str]:
    """The subjects ``--subjects`` / ``--max-subjects`` keep, in benchmark order."""
    subjects = list(available)
    if settings.subjects:
        unknown = [s for s in settings.subjects if s not in subjects]
        if unknown:
            raise ConfigError(
                "--subjects",
                ",".join(settings.subjects),
                f"unknown {unknown[:5]}; e.g. {', '.join(subjects[:6])}",
            )
        subjects = [s for s in subjects if s in settings.subjects]
    if settings.max_subjects is not None:
        _positive(settings.max_subjects, "--max-subjects")
        subjects = subjects[: settings.max_subjects]
    return set(subjects)


def check_metric_names(metrics: list[str], toybench: bool) -> None:
    """Fail before hours of generation, not after: every metric must be a known name."""
    import cgrpo.rewards  # noqa: F401  (registers the built-in rewards)
    from cgrpo.evaluation.benchmarks.toybench import HELDOUT_METRICS
    from cgrpo.rewards.base import REWARDS

    for name in metrics:
        if name in HELDOUT_METRICS:
            if not toybench:
                raise ConfigError("--metrics", name, "is a toybench measure (--bench toybench)")
        elif not name.startswith("python:") and name not in REWARDS:
            raise ConfigError(
                "--metrics",
                name,
                "unknown metric; choose from "
                f"{', '.join([*REWARDS.names(), *HELDOUT_METRICS])} "
                "or python:module:function",
            )


def check_meta(out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Refuse to mix results of different evaluations in one folder; returns the old meta.

    A folder without records or images holds nothing to mix with (e.g. a run that failed
    while loading the model), so its old settings are ignored.
    """
    from cgrpo.evaluation.harness import IMAGES_DIR
    from cgrpo.evaluation.results import META_FILE, RECORDS_FILE

    path = out / META_FILE
    images = out / IMAGES_DIR
    holds_results = (out / RECORDS_FILE).is_file() or (images.is_dir() and any(images.iterdir()))
    if not path.is_file() or not holds_results:
        return {}
    old = json.loads(path.read_text(encoding="utf-8"))
    for key in META_KEYS:
        if key in old and old.get(key) != meta.get(key):
            raise ConfigError(
                "--out",
                str(out),
                f"holds an evaluation with different {key} "
                f"({old.get(key)!r}, now {meta.get(key)!r}); use another --out "
                "or delete that folder",
            )
    return old


def sampler_settings(settings: EvalSettings, config: Any) -> dict[str, Any]:
    """``num_steps``, ``shift``, ``dynamic_shift`` for the sampler: flags, else the config."""
    shift = settings.shift if settings.shift is not None else config.sampling.shift
    dynamic = config.sampling.dynamic_shift if settings.shift is None else shift == "dynamic"
    return {
        "num_steps": settings.num_steps or config.eval.num_steps,
        "shift": config.sampling.shift if shift == "dynamic" else float(shift),
        "dynamic_shift": dynamic,
    }


def build_eval_policy(config: Any, settings: EvalSettings, device: str) -> Any:
    """The policy to evaluate: the config's backend, with the run's adapter when given."""
    from cgrpo.training.runs import adapter_path, build_policy_from_config

    try:
        policy = build_policy_from_config(config, device, with_lora=settings.adapter is not None)
    except ConfigError as e:
        if e.key == "model.options.guidance":
            raise ConfigError(
                "--guidance",
                settings.guidance,
                f"backend {config.model.backend!r} has no guidance scale",
            ) from None
        raise
    if settings.adapter is not None:
        policy.load_adapter(adapter_path(settings.adapter, settings.checkpoint))
    return policy.eval()


def evaluate_benchmark(settings: EvalSettings) -> EvalOutcome:
    """Generate (or find) and score the benchmark's images into the output folder."""
    import torch

    from cgrpo.config.schema import to_dict
    from cgrpo.evaluation.benchmarks.toybench import HELDOUT_METRICS, heldout_metric
    from cgrpo.evaluation.results import META_FILE
    from cgrpo.evaluation.resumable import run_evaluation
    from cgrpo.rewards.base import RewardContext
    from cgrpo.rewards.build import build_reward

    settings = with_protocol(settings)
    bench_name = settings.bench or "dreambench"
    if bench_name not in BENCHES:
        raise ConfigError("--bench", bench_name, f"choose from {', '.join(BENCHES)}")
    seeds = settings.seeds if settings.seeds is not None else 1
    _positive(seeds, "--seeds")
    _positive(settings.batch_size, "--batch-size")
    if settings.images is not None and settings.adapter is not None:
        raise ConfigError(
            "--images",
            str(settings.images),
            "cannot be combined with --adapter (it scores existing images)",
        )
    config = load_eval_config(settings)
    if settings.images is None and config is None:
        raise ConfigError(
            "--config",
            None,
            "required to generate images (or pass --images DIR to score existing ones)",
        )
    if settings.guidance is not None and config is not None and settings.images is None:
        config.model.options["guidance"] = float(settings.guidance)
    meta: dict[str, Any] = {
        "bench": bench_name,
        "mode": "images" if settings.images else "generate",
        "protocol": settings.protocol,
    }
    world = None
    if bench_name == "dreambench":
        from cgrpo.evaluation.benchmarks.dreambench import dreambench_items, load_dreambench

        if settings.data is None:
            raise ConfigError(
                "--data",
                None,
                "required for --bench dreambench (the DreamBench folder, e.g. ../shared/dreambench)",
            )
        reference = settings.reference or "first"
        try:
            bench = load_dreambench(settings.data, reference, settings.unique_token)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(
                "--data/--reference", f"{settings.data} {reference}", str(e)
            ) from None
        items = dreambench_items(bench, select_subjects(list(bench.subjects), settings))
        meta.update(data=str(bench.root), reference=reference, unique_token=settings.unique_token)
        default_metrics = list(DREAMBENCH_METRICS)
    else:
        from cgrpo.evaluation.benchmarks.toybench import toybench_items

        data_options = {}
        if config is not None and config.data.name == "toyworld":
            data_options = dict(config.data.options)
        items, world = toybench_items(data_options)
        keep = select_subjects(list(dict.fromkeys(it.subject for it in items)), settings)
        items = [it for it in items if it.subject in keep]
        meta["world"] = {"size": world.size, "seed": world.seed}
        names = [r.name for r in config.rewards] if config is not None else []
        default_metrics = list(dict.fromkeys(names)) + list(HELDOUT_METRICS)
    metrics = settings.metrics if settings.metrics is not None else default_metrics
    if not metrics:
        raise ConfigError("--metrics", "", "name at least one metric")
    check_metric_names(metrics, toybench=world is not None)
    options: dict[str, dict[str, Any]] = {}
    if config is not None:
        for spec in config.rewards:
            options.setdefault(spec.name, dict(spec.options))
    if settings.protocol is not None:
        for name, opts in get_protocol(settings.protocol).metric_options.items():
            options[name] = {**options.get(name, {}), **opts}
    for name, opts in load_metric_options(settings.metric_options).items():
        options[name] = {**options.get(name, {}), **opts}

    base_seed = settings.seed if settings.seed is not None else 0
    shared_seed = bool(settings.shared_seed)
    gen_kwargs: dict[str, Any] = {}
    if settings.images is None:
        gen_kwargs = sampler_settings(settings, config)
        meta.update(
            adapter=str(settings.adapter.resolve()) if settings.adapter else None,
            checkpoint=settings.checkpoint if settings.adapter else None,
            model=to_dict(config.model),
            base_seed=base_seed,
            shared_seed=shared_seed,
            **gen_kwargs,
        )
    else:
        meta["images"] = str(settings.images.resolve())
    out = settings.out or (
        (settings.adapter / f"eval-{bench_name}")
        if settings.adapter
        else Path(f"eval-{bench_name}")
    )
    out.mkdir(parents=True, exist_ok=True)
    old = check_meta(out, meta)
    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    known = dict(old.get("metric_columns", {}))
    expected = [c for m in metrics for c in known[m]] if all(m in known for m in metrics) else None
    built: list[Any] = []

    def build_metrics() -> list[Any]:
        context = RewardContext(device=torch.device(device))
        for name in metrics:
            if name in HELDOUT_METRICS:
                built.append(heldout_metric(name, world))
            else:
                built.append(build_reward(name, options.get(name, {}), context).to(device))
        return built

    meta.update(
        metrics=sorted(set(old.get("metrics", [])) | set(metrics)),
        seeds=max(seeds, int(old.get("seeds", 0) or 0)),
        metric_columns=known,
    )
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(
        f"eval: {bench_name}, {len(items)} pairs x {seeds} seed(s), metrics "
        f"{', '.join(metrics)} -> {out}",
        file=sys.stderr,
    )
    records = run_evaluation(
        items,
        out,
        build_metrics,
        policy_factory=(lambda: build_eval_policy(config, settings, device))
        if settings.images is None
        else None,
        images_dir=settings.images,
        seeds=seeds,
        base_seed=base_seed,
        shared_seed=shared_seed,
        batch_size=settings.batch_size,
        gen_kwargs=gen_kwargs,
        progress=settings.progress,
        expected_columns=expected,
    )
    for name, reward in zip(metrics, built):
        known[name] = list(reward.columns)
        reward.offload()
    meta["metric_columns"] = known
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return EvalOutcome(out, records)


__all__ = [
    "BENCHES",
    "EvalOutcome",
    "EvalSettings",
    "check_meta",
    "evaluate_benchmark",
    "load_eval_config",
    "load_metric_options",
    "sampler_settings",
    "select_subjects",
    "with_protocol",
]
