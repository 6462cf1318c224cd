"""Report files from saved results: tables, Pareto plot, grids, offline HTML (rendered in Chromium)."""

from __future__ import annotations

import argparse
import json
import re

import pytest
import torch
from PIL import Image

from cgrpo.evaluation.cli import (
    add_compare_arguments,
    add_report_arguments,
    run_compare,
    run_report,
)
from cgrpo.evaluation.harness import image_relpath, save_png
from cgrpo.evaluation.output.plots import ParetoPoint, image_grid, pareto_figure, pareto_front
from cgrpo.evaluation.output.report import build_report, choose_axes
from cgrpo.evaluation.output.runs import load_run
from cgrpo.evaluation.results import ResultStore
from cgrpo.evaluation.resumable import save_references
from cgrpo.evaluation.stats.bootstrap import Estimate


def _make_run(tmp_path, name, items, records_factory, offset):
    """A results folder as `cgrpo eval` leaves it: records, images, references."""
    out = tmp_path / name
    store = ResultStore(out)
    save_references(items, out)
    by_key = {it.key: it for it in items}
    g = torch.Generator().manual_seed(len(name))
    for r in records_factory(
        n_subjects=2, n_prompts=3, seeds=2, offset=offset, metrics=("dino-seg", "clip-t", "extra")
    ):
        item = by_key[r["key"].replace("s", "subj", 1)]
        r.update(key=item.key, subject=item.subject, image=image_relpath(item, r["seed"]))
        save_png(torch.rand(3, 32, 32, generator=g), out / r["image"])
        store.put(r)
    store.save()
    return out


@pytest.fixture
def two_runs(tmp_path, items_factory, records_factory):
    items = items_factory(n_subjects=2, n_prompts=3, size=24)
    return (
        _make_run(tmp_path, "base", items, records_factory, 0.0),
        _make_run(tmp_path, "tuned", items, records_factory, 0.08),
    )


def test_single_run_report_files(two_runs):
    run = load_run(two_runs[0])
    files = build_report([run], two_runs[0])
    for name in ("summary_json", "summary_markdown", "per_kind", "per_subject", "pareto", "html"):
        assert files[name].is_file(), name
    summary = json.loads(files["summary_json"].read_text())
    assert summary["n_pairs"] == 6 and set(summary["overall"]) == {"dino-seg", "clip-t", "extra"}
    grids = sorted((two_runs[0] / "grids").glob("*.png"))
    assert [p.stem for p in grids] == ["subj0", "subj1"]
    with Image.open(grids[0]) as im:
        assert im.width > 4 * 160 and im.height > 160  # reference + 3 generations in a row
    with Image.open(files["pareto"]) as im:
        assert im.width >= 600 and im.height >= 400


def test_pareto_figure_axes_front_and_error_bars():
    def est(m, h):
        return Estimate(m, m - h, m + h, 10)

    points = [
        ParetoPoint("a", est(0.5, 0.02), est(0.30, 0.01)),
        ParetoPoint("b", est(0.6, 0.02), est(0.25, 0.01)),
        ParetoPoint("c", est(0.4, 0.02), est(0.20, 0.01)),
    ]  # c is dominated by a
    assert pareto_front([(p.x.mean, p.y.mean) for p in points]) == [True, True, False]
    fig = pareto_figure(points, "dino-seg", "hpsv3")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "dino-seg" and ax.get_ylabel() == "hpsv3"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b", "c"]
    front = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(front) == 1 and list(front[0].get_xdata()) == [0.5, 0.6]


def test_axes_prefer_identity_and_prompt_metrics():
    assert choose_axes(["clip-t", "extra", "dino-seg"]) == ("dino-seg", "clip-t")
    assert choose_axes(["toy-prompt", "gt-scene", "toy-id", "gt-colour"]) == (
        "toy-id",
        "toy-prompt",
    )
    assert choose_axes(["a", "b", "c"]) == ("a", "b")
    assert choose_axes(["a", "b", "c"], y="c") == ("a", "c")
    with pytest.raises(ValueError, match="--x-metric 'nope'"):
        choose_axes(["a", "b"], x="nope")


def test_grid_has_reference_and_labelled_cells():
    ref = Image.new("RGB", (40, 30), (255, 0, 0))
    cells = [
        (Image.new("RGB", (32, 32), (0, 0, 255)), f"{i}: a long prompt text here") for i in range(7)
    ]
    grid = image_grid(ref, cells, title="subject", cell=64, columns=3)
    assert grid.size == (8 + (64 + 8) * 4 + 8, grid.size[1])
    px = grid.load()
    colours = {px[x, y] for x in range(0, grid.width, 3) for y in range(0, grid.height, 3)}
    assert (255, 0, 0) in colours and (0, 0, 255) in colours


def test_html_is_offline(two_runs):
    build_report([load_run(p) for p in two_runs], two_runs[0].parent / "cmp")
    html = (two_runs[0].parent / "cmp" / "report.html").read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert "<th>dino-seg [cosine, 0-1]</th>" in html  # every header names the scale
    srcs = re.findall(r"src='([^']+)'", html)
    assert srcs and all((two_runs[0].parent / "cmp" / s).resolve().is_file() for s in srcs)
    build_report([load_run(two_runs[0])], two_runs[0].parent / "one", embed_images=True)
    embedded = (two_runs[0].parent / "one" / "report.html").read_text()
    assert re.findall(r"src='([^']+)'", embedded)
    assert all(
        s.startswith("data:image/png;base64,") for s in re.findall(r"src='([^']+)'", embedded)
    )


def test_report_command_several_runs_and_labels(two_runs, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    args = parser.parse_args(
        [
            *map(str, two_runs),
            "--labels",
            "base,tuned",
            "--out",
            str(tmp_path / "rep"),
            "--resamples",
            "200",
        ]
    )
    assert run_report(args) == 0
    out = capsys.readouterr().out
    assert "| base |" in out and "| tuned |" in out
    assert (tmp_path / "rep" / "runs" / "tuned" / "per_kind.csv").is_file()
    assert sorted(p.name for p in (tmp_path / "rep" / "grids").iterdir()) == ["base", "tuned"]
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    tuned, base = summary["runs"]["tuned"]["overall"], summary["runs"]["base"]["overall"]
    assert tuned["dino-seg"]["mean"] > base["dino-seg"]["mean"]


def test_compare_command_prints_paired_deltas(two_runs, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_compare_arguments(parser)
    args = parser.parse_args([*map(str, two_runs), "--json", str(tmp_path / "d.json")])
    assert run_compare(args) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.strip()}
    assert "+0.08" in lines["dino-seg"] and lines["dino-seg"].endswith("*")
    assert "-0.04" in lines["clip-t"] and lines["clip-t"].endswith("*")
    deltas = {d["metric"]: d for d in json.loads((tmp_path / "d.json").read_text())["deltas"]}
    assert deltas["dino-seg"]["delta_n"] == 6 and deltas["dino-seg"]["significant"]


def test_report_renders_in_headless_chromium(two_runs, tmp_path, capsys):
    from cgrpo.evaluation.output.screenshot import find_chromium

    if find_chromium() is None:
        pytest.skip("chromium not installed (scripts/install_chromium.sh installs it)")
    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    shot = tmp_path / "shot.png"
    args = parser.parse_args(
        [*map(str, two_runs), "--out", str(tmp_path / "rep"), "--screenshot", str(shot)]
    )
    assert run_report(args) == 0
    assert f"screenshot: {shot}" in capsys.readouterr().out
    with Image.open(shot) as im:
        assert im.size == (1200, 900)
        rgb = im.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20)
    assert len(colours) > 200  # text, tables, the plot: far from a blank page
    dominant = max(c for c, _ in colours)
    assert dominant < 0.8 * 1200 * 900
    header = rgb.getpixel((600, 10))
    assert header[2] > header[0] and sum(header) < 300  # the dark blue title bar rendered
