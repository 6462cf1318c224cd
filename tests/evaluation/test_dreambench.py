"""The DreamBench parser on the real dataset files (original layout) and on broken copies."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from cgrpo.evaluation.benchmarks.dreambench import (
    ACCESSORIZATION,
    PROPERTY_MODIFICATION,
    RECONTEXTUALIZATION,
    classify_template,
    load_dreambench,
    parse_prompts_and_classes,
    parse_reference_choice,
    render_prompt,
)

LIVE = {"cat", "cat2", "dog", "dog2", "dog3", "dog5", "dog6", "dog7", "dog8"}


def test_real_dreambench_has_30_subjects_750_pairs_9_live(dreambench_root):
    bench = load_dreambench(dreambench_root)
    assert len(bench.subjects) == 30
    assert len(bench.pairs) == 750
    assert {s.name for s in bench.subjects.values() if s.live} == LIVE
    assert len(bench.object_templates) == 25 and len(bench.live_templates) == 25
    assert Counter(p.subject for p in bench.pairs) == {name: 25 for name in bench.subjects}
    assert len({p.key for p in bench.pairs}) == 750
    for pair in bench.pairs:
        assert pair.references[0].is_file()


@pytest.mark.parametrize(
    "subject, noun",
    [
        ("backpack_dog", "backpack"),
        ("bear_plushie", "stuffed animal"),
        ("berry_bowl", "bowl"),
        ("cat2", "cat"),
        ("colorful_sneaker", "sneaker"),
        ("dog6", "dog"),
        ("duck_toy", "toy"),
        ("pink_sunglasses", "glasses"),
        ("red_cartoon", "cartoon"),
        ("wolf_plushie", "stuffed animal"),
    ],
)
def test_class_nouns(dreambench_root, subject, noun):
    classes, _, _ = parse_prompts_and_classes(dreambench_root / "prompts_and_classes.txt")
    assert classes[subject] == noun


def test_prompts_render_with_class_noun_and_optional_token(dreambench_root):
    bench = load_dreambench(dreambench_root)
    by_key = {p.key: p for p in bench.pairs}
    assert by_key["backpack/00"].prompt == "a backpack in the jungle"
    assert by_key["bear_plushie/24"].prompt == "a cube shaped stuffed animal"
    assert by_key["dog/10"].prompt == "a dog wearing a red hat"  # live list only
    assert by_key["can/10"].prompt == "a can with a wheat field in the background"
    sks = load_dreambench(dreambench_root, unique_token="sks")
    assert {p.key: p.prompt for p in sks.pairs}["dog/01"] == "a sks dog in the snow"


def test_prompt_kinds_per_list(dreambench_root):
    bench = load_dreambench(dreambench_root)
    obj = Counter(classify_template(t) for t in bench.object_templates)
    live = Counter(classify_template(t) for t in bench.live_templates)
    assert obj == {RECONTEXTUALIZATION: 20, PROPERTY_MODIFICATION: 5}
    assert live == {RECONTEXTUALIZATION: 10, ACCESSORIZATION: 10, PROPERTY_MODIFICATION: 5}
    kinds = Counter(p.kind for p in bench.pairs)
    assert kinds == {
        RECONTEXTUALIZATION: 21 * 20 + 9 * 10,
        ACCESSORIZATION: 90,
        PROPERTY_MODIFICATION: 150,
    }


def test_classify_template_rule():
    assert classify_template("a {0} {1} on top of a mirror") == RECONTEXTUALIZATION
    assert classify_template("a {0} {1} in a chef outfit") == ACCESSORIZATION
    assert classify_template("a {0} {1} wearing pink glasses") == ACCESSORIZATION
    assert classify_template("a shiny {0} {1}") == PROPERTY_MODIFICATION
    assert render_prompt("a  {0} {1}  in the snow", "dog") == "a dog in the snow"


def test_protocol_file_maps_references_onto_existing_local_files(dreambench_root):
    protocol = json.loads((dreambench_root / "customized_grpo_singleip.json").read_text())
    bench = load_dreambench(dreambench_root, "protocol:customized_grpo_singleip.json")
    wanted = {}
    for entry in protocol:
        subject, name = entry["image_paths"][0].split("/")[-2:]
        wanted[(subject, entry["prompt"])] = dreambench_root / subject / name
    assert len(wanted) == 750
    for pair in bench.pairs:
        assert pair.references == (wanted[(pair.subject, pair.prompt)],)
        assert pair.references[0].is_file()
    refs = {p.subject: p.references[0].name for p in bench.pairs}
    assert refs["backpack"] == "02.jpg" and refs["dog3"] == "05.jpg" and refs["dog5"] == "00.jpg"


def test_reference_first_and_index(dreambench_root):
    first = load_dreambench(dreambench_root, "first")
    assert all(p.references[0].name == "00.jpg" for p in first.pairs)
    third = load_dreambench(dreambench_root, "index:2")
    assert all(p.references[0].name == "02.jpg" for p in third.pairs)
    with pytest.raises(ValueError, match="backpack_dog. has only 5 images"):
        load_dreambench(dreambench_root, "index:5")


@pytest.mark.parametrize("spec", ["last", "index:x", "protocol:", "index"])
def test_bad_reference_choice(spec):
    with pytest.raises(ValueError, match="--reference"):
        parse_reference_choice(spec)


def _copy_layout(src, dst, subjects=("backpack", "dog")):
    """A two-subject DreamBench with the original prompt file (1 image each)."""
    text = (src / "prompts_and_classes.txt").read_text()
    lines = text.splitlines()
    start = lines.index("subject_name,class") + 1
    end = lines.index("", start)
    keep = [ln for ln in lines[start:end] if ln.split(",")[0] in subjects]
    (dst / "prompts_and_classes.txt").write_text("\n".join(lines[:start] + keep + lines[end:]))
    for s in subjects:
        (dst / s).mkdir()
        (dst / s / "00.jpg").write_bytes((src / s / "00.jpg").read_bytes())
    return text


def test_protocol_entry_without_pair_or_file_is_an_error(dreambench_root, tmp_path):
    _copy_layout(dreambench_root, tmp_path)
    entry = {"prompt": "a backpack in the jungle", "image_paths": ["x/dataset/backpack/00.jpg"]}
    (tmp_path / "p.json").write_text(json.dumps([entry]))
    with pytest.raises(ValueError, match="no entry for subject 'backpack'"):
        load_dreambench(tmp_path, "protocol:p.json")
    missing = dict(entry, image_paths=["x/dataset/backpack/07.jpg"])
    (tmp_path / "q.json").write_text(json.dumps([missing]))
    with pytest.raises(FileNotFoundError, match="07.jpg"):
        load_dreambench(tmp_path, "protocol:q.json")


def test_malformed_prompt_file_names_the_file(tmp_path):
    (tmp_path / "prompts_and_classes.txt").write_text("Classes\n\nsubject_name,class\ndog,dog\n")
    (tmp_path / "dog").mkdir()
    with pytest.raises(ValueError, match="prompts_and_classes.txt: no object or live prompt list"):
        load_dreambench(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a DreamBench folder"):
        load_dreambench(tmp_path / "nowhere")
