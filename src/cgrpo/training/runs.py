"""Building policies from configs and finding the pieces of a run directory."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError

from cgrpo.config.schema import ConfigError
from cgrpo.config.train import Config, load_config
from cgrpo.policies.base import LoraSettings, Policy, build_policy

#: ``model.lora.init`` -> peft's ``init_lora_weights``
LORA_INIT_WEIGHTS: dict[str, bool | str] = {"default": True, "gaussian": "gaussian"}


def lora_settings(config: Config) -> LoraSettings:
    lc = config.model.lora
    return LoraSettings(
        rank=lc.rank,
        alpha=lc.alpha,
        dropout=lc.dropout,
        targets=tuple(lc.targets) if isinstance(lc.targets, list) else lc.targets,
        init_weights=LORA_INIT_WEIGHTS[lc.init],
    )


def build_policy_from_config(
    config: Config, device: torch.device | str = "cpu", with_lora: bool = False
) -> Policy:
    """The configured backend (base weights), optionally with a fresh LoRA adapter."""
    policy = build_policy(config.model.backend, config.model.options, device=device)
    if with_lora:
        try:
            policy.add_lora(lora_settings(config))
        except ValueError as e:  # an unknown preset, or names the model does not have
            raise ConfigError("model.lora.targets", config.model.lora.targets, str(e)) from None
    return policy.to(device)


def adapter_path(run_dir: str | Path, checkpoint: str = "final") -> Path:
    """The adapter directory of a run: ``final`` (end of training), ``latest`` or ``step-N``,
    verified against its manifest (``latest`` skips damaged checkpoints)."""
    from cgrpo.training.checkpoint import latest_checkpoint, verify_directory

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    if checkpoint == "final":
        path = run_dir / "final"
        if not (path / "adapter.safetensors").is_file():
            checkpoint = "latest"  # an interrupted run has no final adapter yet
    if checkpoint == "latest":
        path = latest_checkpoint(run_dir)
        if path is None:
            raise FileNotFoundError(f"{run_dir} has no final adapter and no intact checkpoint")
    elif checkpoint != "final":
        path = run_dir / "checkpoints" / checkpoint
        if not (path / "adapter.safetensors").is_file():
            raise FileNotFoundError(f"no adapter at {path}")
    verify_directory(path)
    return path


def load_run_policy(
    run_dir: str | Path, checkpoint: str = "final", device: torch.device | str = "cpu"
) -> tuple[Config, Policy]:
    """The run's resolved config and its policy with the trained adapter loaded."""
    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.yaml")
    path = adapter_path(run_dir, checkpoint)  # verified before the model is built
    policy = build_policy_from_config(config, device, with_lora=True)
    try:
        policy.load_adapter(path)
    except SafetensorError as e:
        raise ValueError(f"{path / 'adapter.safetensors'} is not a readable adapter: {e}") from None
    return config, policy.eval()
