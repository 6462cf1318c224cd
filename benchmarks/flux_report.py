"""Markdown tables of a ``flux_step.py`` result (the JSON it writes)."""

from __future__ import annotations


def _f(value, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def _ckpt(fraction: float) -> str:
    return {1.0: "all", 0.0: "off"}.get(fraction, f"{fraction:g} of blocks")


def _status(row: dict, text: str) -> str:
    return text if row.get("status") == "ok" else row.get("status", "-")


def training_table(rows: list[dict], pairs: int) -> list[str]:
    out = [
        f"| LoRA rank | micro-batch | checkpointing | s / pair | update ({pairs} pairs) s "
        "| TFLOP/s | MFU | peak GiB | grad-norm rel. diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = f"| r{r['rank']} | {r['micro_batch']} | {_ckpt(r['checkpointing'])} |"
        if r.get("status") != "ok":
            out.append(f"{head} {r.get('status')} | | | | | |")
            continue
        out.append(
            f"{head} {r['s_per_pair']:.3f} | {r['update_s']:.1f} | {_f(r['tflops'], '{:.3g}')} "
            f"| {_f(r['mfu'], '{:.1%}')} | {_f(r['peak_gib'], '{:.1f}')} "
            f"| {_f(r.get('grad_rel_diff'), '{:.1e}')} |"
        )
    return out


def sampling_table(rows: list[dict], steps: int) -> list[str]:
    out = [
        f"| LoRA rank | loop | chunk | LoRA | s / step (group) | sampling ({steps} steps) s "
        "| TFLOP/s | MFU | peak GiB | first-update max abs(d log-prob) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lora = "merged" if r["merged"] else "unmerged"
        head = f"| r{r['rank']} | {r['loop']} | {r['chunk']} | {lora} |"
        if r.get("status") != "ok":
            out.append(f"{head} {r.get('status')} | | | | | |")
            continue
        out.append(
            f"{head} {r['s_per_step']:.3f} | {r['sampling_s']:.1f} | {_f(r['tflops'], '{:.3g}')} "
            f"| {_f(r['mfu'], '{:.1%}')} | {_f(r['peak_gib'], '{:.1f}')} "
            f"| {_f(r.get('first_update_log_prob_dev'), '{:.1e}')} |"
        )
    return out


def step_lines(res: dict) -> list[str]:
    step, loop = res.get("step"), res.get("per_sample_step") or res.get("per_sample_projection")
    if not step or step.get("status") != "ok":
        return ["The measured step did not run: " + "; ".join(res.get("skipped", [])) or "-"]
    rewards = res.get("rewards", {}).get("decode_and_score_s")
    total = step["step_s"] + (rewards or 0.0)
    kind = "measured" if res.get("per_sample_step") else "projected from its rows"
    out = [
        f"Step at LoRA r{step['rank']}: micro-batch {step['micro_batch']}, checkpointing "
        f"{_ckpt(step['checkpointing'])}, chunk {step['chunk']}, LoRA "
        f"{'merged' if step['merged'] else 'unmerged'} for sampling.",
        "",
        "| phase | batched s | per-sample s | ratio | batched MFU | batched peak GiB |",
        "|---|---|---|---|---|---|",
    ]
    for phase, peak in (
        ("sampling", "sampling_peak_gib"),
        ("training", "training_peak_gib"),
        ("step", None),
    ):
        ours = step[f"{phase}_s"]
        theirs = loop.get(f"{phase}_s") if loop else None
        ratio = theirs / ours if theirs else None
        out.append(
            f"| {phase} | {ours:.1f} | {_f(theirs, '{:.1f}')} | {_f(ratio, '{:.2f}x')} "
            f"| {_f(step.get(f'{phase}_mfu'), '{:.1%}')} | {_f(step.get(peak), '{:.1f}')} |"
        )
    out += [
        "",
        f"Per-sample loop: {kind}. VAE decode + rewards: {_f(rewards, '{:.1f}')} s; "
        f"step total with them: {total:.1f} s. First-update max |ratio - 1|: "
        f"{step['first_update_ratio_dev']:.2e}.",
    ]
    return out


def markdown(res: dict) -> str:
    s, env = res["settings"], res["environment"]
    out = [
        f"FLUX step sweep ({'tiny' if s['tiny'] else 'FLUX.1-dev size'}, {s['dtype']} base, "
        f"autocast {s['autocast']}, {env['device']}, torch {env['torch']}, diffusers "
        f"{env['diffusers']}): group {s['group']}, {s['steps']} steps, {s['size']}px target + "
        f"{s['ref_size']}px reference + {s['text_tokens']} text tokens; "
        f"{res.get('elapsed_s', 0):.0f} s in all.",
        "",
        "### Training (update) configs",
        "",
        *training_table(res.get("training", []), res.get("pairs")),
        "",
        "### Sampling configs",
        "",
        *sampling_table(res.get("sampling", []), s["steps"]),
        "",
    ]
    for row in res.get("sampling", []):
        if "agreement" in row:
            a = row["agreement"]
            out.append(
                f"Per-sample vs batched (r{row['rank']}): max |d latent| "
                f"{a['max_abs_diff_latent']:.2e}, max |d log-prob| {a['max_abs_diff_log_prob']:.2e}."
            )
    out += ["", "### The step", "", *step_lines(res)]
    rewards = res.get("rewards")
    if rewards:
        out += ["", f"### VAE and rewards ({s['group']} images, forward only)", ""]
        for name, part in rewards.items():
            if not isinstance(part, dict):
                continue
            if "error" in part:
                out.append(f"- {name}: failed: {part['error']}")
                continue
            timed = {k: v for k, v in part.items() if isinstance(v, dict)} or {name: part}
            for what, t in timed.items():
                out.append(
                    f"- {what}: {t['s']:.3f} s, peak {_f(t.get('peak_gib'), '{:.1f}')} GiB, "
                    f"weights {part.get('weights_gib', 0):.2f} GiB"
                )
    compiled = res.get("compiled")
    if compiled:
        out += ["", f"### Regional compile ({compiled['backend']})", ""]
        if "error" in compiled:
            out.append(f"Failed: {compiled['error']}")
        else:
            for kind in ("training", "sampling"):
                row = compiled.get(kind, {})
                value = row.get("update_s") if kind == "training" else row.get("sampling_s")
                out.append(
                    f"- {kind}: {_status(row, _f(value, '{:.1f}') + ' s projected')}, "
                    f"first call (compiling) {_f(row.get('warmup_s'), '{:.0f}')} s"
                )
    if res.get("skipped"):
        out += ["", "Skipped: " + "; ".join(res["skipped"])]
    return "\n".join(out)
