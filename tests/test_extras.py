"""The optional extras (wandb, hf, app) stay unimported unless their feature is used."""

from __future__ import annotations

import json
import subprocess
import sys

EXTRAS = ("wandb", "datasets", "pyarrow", "gradio", "fastapi", "pandas")

SCRIPT = """
import json, sys
import cgrpo, cgrpo.cli
from cgrpo.cli import main
from cgrpo.data import build_dataset
parser = cgrpo.cli.build_parser()  # every subcommand's module, cgrpo app's included
assert main(["config", "logging.sample_every=2"]) == 0
dataset = build_dataset("toyworld", {}, "train")
dataset[0]
print(json.dumps(sorted(m for m in %r if m in sys.modules)))
"""


def _imported(script: str) -> list[str]:
    """The extras ``script`` (run in a fresh interpreter) left in ``sys.modules``."""
    out = subprocess.run(
        [sys.executable, "-c", script % (EXTRAS,)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cgrpo_and_other_commands_do_not_import_the_extras():
    assert _imported(SCRIPT) == []


def test_the_probe_sees_an_import():
    """The same probe reports an extra once something imports it (it can fail)."""
    uses_wandb = "import cgrpo.extras; cgrpo.extras.require_extra('wandb', 'wandb', 'x')"
    assert "wandb" in _imported(SCRIPT.replace("dataset[0]", "dataset[0]\n" + uses_wandb))
