"""``cgrpo app --run RUN``: serve the try-an-adapter page (:mod:`cgrpo.app.page`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cgrpo.config.schema import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=Path, required=True, help="run directory (config and adapter)")
    p.add_argument(
        "--checkpoint", default="final", help="final, latest or step-NNNNNN (default: final)"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; anything else exposes "
        "the page to your network)",
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument(
        "--num-steps",
        type=int,
        default=None,
        help="deterministic sampler steps (default: the run's sampling.num_steps)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if any)")
    p.add_argument(
        "--examples", type=int, default=24, help="references offered from the run's data"
    )


def run(args: argparse.Namespace) -> int:
    import torch

    if not 0 < args.port < 65536:
        raise ConfigError("--port", args.port, "must be between 1 and 65535")
    if args.num_steps is not None and args.num_steps < 1:
        raise ConfigError("--num-steps", args.num_steps, "must be >= 1")
    if args.examples < 0:
        raise ConfigError("--examples", args.examples, "must be >= 0")
    from cgrpo.app import page  # checks the extra before the model is loaded
    from cgrpo.app.tryout import Tryout

    page._gradio()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tryout = Tryout(args.run, args.checkpoint, device, args.num_steps, args.examples)
    print(f"cgrpo app: http://{args.host}:{args.port}  (Ctrl-C stops it)", flush=True)
    page.launch(tryout, args.host, args.port, block=True)
    return 0
