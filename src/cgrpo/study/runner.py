"""Running a study: every (arm, seed) as its own ``cgrpo train`` process, resumably.

Layout of a study directory::

    <out>/study.yaml               the resolved study (arms, seeds, overrides)
    <out>/runs/<arm>/seed-<s>/     ordinary run directories (config, metrics, final/, ...)
    <out>/logs/<arm>-seed-<s>.log  each run's console output

A run whose final adapter and held-out results exist is skipped; one with a checkpoint is
resumed (``cgrpo train --resume``); anything else is started afresh (``cgrpo train`` itself
clears a run of its own that stopped before its first checkpoint). Runs go out as
separate processes, ``jobs`` at a time, each with ``cores / jobs`` torch threads (unless
``OMP_NUM_THREADS`` is set), because two processes that each use every core run many times
slower than one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

import yaml

from cgrpo.config import to_dict
from cgrpo.study.spec import StudyConfig, StudyRun, plan_runs

__all__ = ["RunOutcome", "StudyInterrupted", "run_dir", "run_finished", "run_study"]


class StudyInterrupted(Exception):
    """Ctrl-C / SIGTERM: the running runs were told to checkpoint and stop."""


@dataclass
class RunOutcome:
    run: StudyRun
    status: str  # "skipped" (already done), "done", "failed"
    seconds: float = 0.0
    log: Path | None = None
    message: str = ""


def run_dir(out: Path, run: StudyRun) -> Path:
    return out / "runs" / run.arm / f"seed-{run.seed}"


def log_path(out: Path, run: StudyRun) -> Path:
    return out / "logs" / f"{run.arm}-seed-{run.seed}.log"


def run_finished(path: Path) -> bool:
    """A run is done when its final adapter and its after-training evaluation exist."""
    return (path / "final" / "adapter.safetensors").is_file() and (
        path / "eval_after.json"
    ).is_file()


def _has_checkpoint(path: Path) -> bool:
    from cgrpo.training.checkpoint import list_checkpoints

    return bool(list_checkpoints(path))


def train_command(study: StudyConfig, run: StudyRun, path: Path) -> list[str]:
    """The command line of one run (a resume when the run has a checkpoint)."""
    launcher = list(study.launcher) or [sys.executable, "-m", "cgrpo.cli"]
    common = ["logging.progress=false"]
    if _has_checkpoint(path):
        return [*launcher, "train", "--resume", str(path), *common]
    return [
        *launcher,
        "train",
        "--config",
        study.base,
        "--output",
        str(path),
        *run.overrides,
        *common,
    ]


def _threads_env(jobs: int) -> dict[str, str]:
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def write_study_file(study: StudyConfig, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.yaml").write_text(yaml.safe_dump(to_dict(study), sort_keys=False))


def run_study(
    study: StudyConfig,
    out: str | Path,
    *,
    jobs: int = 1,
    progress: bool = True,
    on_outcome: Callable[[RunOutcome], None] | None = None,
) -> list[RunOutcome]:
    """Run every unfinished run of ``study`` into ``out``; returns one outcome per run.

    Raises :class:`StudyInterrupted` on Ctrl-C / SIGTERM after the running processes have
    checkpointed (each run resumes where it stopped on the next call).
    """
    out = Path(out)
    write_study_file(study, out)
    runs = plan_runs(study)
    env = _threads_env(jobs)
    stop = threading.Event()
    children: dict[int, subprocess.Popen] = {}
    lock = threading.Lock()

    def one(run: StudyRun) -> RunOutcome:
        path = run_dir(out, run)
        log = log_path(out, run)
        if run_finished(path):
            return RunOutcome(run, "skipped", log=log)
        if stop.is_set():
            return RunOutcome(run, "failed", log=log, message="not started (interrupted)")
        path.parent.mkdir(parents=True, exist_ok=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = train_command(study, run, path)
        started = time.perf_counter()
        with open(log, "a") as fh:
            fh.write("$ " + " ".join(cmd) + "\n")
            fh.flush()
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
            with lock:
                children[proc.pid] = proc
            code = proc.wait()
            with lock:
                children.pop(proc.pid, None)
        seconds = time.perf_counter() - started
        if code == 0 and run_finished(path):
            return RunOutcome(run, "done", seconds, log)
        return RunOutcome(run, "failed", seconds, log, _last_line(log) or f"exit status {code}")

    outcomes: list[RunOutcome] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(runs), desc="study", unit="run", dynamic_ncols=True)

    def record(outcome: RunOutcome) -> None:
        outcomes.append(outcome)
        if bar is not None:
            bar.set_postfix_str(f"{outcome.run.name} {outcome.status}", refresh=False)
            bar.update(1)
        if on_outcome is not None:
            on_outcome(outcome)

    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        futures = [pool.submit(one, run) for run in runs]
        for future in futures:
            while True:
                try:
                    record(future.result(timeout=0.5))
                    break
                except FutureTimeout:
                    continue
    except KeyboardInterrupt:
        stop.set()
        with lock:
            running = list(children.values())
        for proc in running:
            proc.send_signal(signal.SIGINT)  # the trainer checkpoints on Ctrl-C
        for proc in running:
            try:
                proc.wait(timeout=600)
            except subprocess.TimeoutExpired:
                proc.kill()
        pool.shutdown(wait=True, cancel_futures=True)
        raise StudyInterrupted(
            f"study interrupted; {len(running)} running run(s) checkpointed. "
            f"Continue with the same command: finished runs are skipped."
        ) from None
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
        if bar is not None:
            bar.close()
    pool.shutdown(wait=True)
    order = {r: i for i, r in enumerate(runs)}
    return sorted(outcomes, key=lambda o: order[o.run])


def _raise_keyboard_interrupt(signum, frame) -> None:  # noqa: ARG001 (signal handler)
    raise KeyboardInterrupt


def _last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""
