"""DreamBench (the DreamBooth dataset) in its original layout.

Layout read here (the dataset's own files, unchanged)::

    <root>/prompts_and_classes.txt    "Classes" CSV (subject_name,class) + two prompt lists
    <root>/<subject>/NN.jpg           4-6 photos per subject
    <root>/<subject>/NN_seg.png       optional: the photo's subject cut-out (dino-seg's
                                      reference, see cgrpo.rewards.segmentation.segment);
                                      not a photo

``prompts_and_classes.txt`` holds two Python-style lists of 25 templates each,
``'a {0} {1} in the jungle'.format(unique_token, class_token)``: "Object Prompts" for the
21 objects and "Live Subject Prompts" for the 9 cats and dogs. Zero-shot subject-driven
models get the template with an empty unique token and the class noun
("a backpack in the jungle"); 30 subjects x 25 prompts = 750 pairs.

Prompt kinds (DreamBooth's three editing families), decided from the template text:

* ``property_modification``: words stand between "a" and the subject ("a red {0} {1}",
  "a cube shaped {0} {1}") -- the subject itself must change (5 per list);
* ``accessorization``: the subject "wears" something or is "in a ... outfit" (10 in the
  live list, none in the object list);
* ``recontextualization``: everything else -- a new place or background (20 object, 10 live).

Reference choice (``--reference``): ``first`` (the first photo by file name),
``index:N`` (photo N of each subject's sorted list) or ``protocol:FILE``: a JSON list of
``{"prompt", "image_paths"}`` entries such as ``customized_grpo_singleip.json``, whose
paths (``dreambooth/dataset/<subject>/<file>``) are mapped onto ``<root>/<subject>/<file>``.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROMPTS_FILE = "prompts_and_classes.txt"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
LIVE_CLASSES = ("cat", "dog")
"""Class nouns whose subjects get the live-subject prompt list (DreamBooth's convention)."""

RECONTEXTUALIZATION = "recontextualization"
ACCESSORIZATION = "accessorization"
PROPERTY_MODIFICATION = "property_modification"
PROMPT_KINDS = (RECONTEXTUALIZATION, ACCESSORIZATION, PROPERTY_MODIFICATION)

_ACCESSORY_WORDS = re.compile(r"\b(wearing|outfit)\b")


@dataclass(frozen=True)
class DreamBenchSubject:
    """One subject folder.

    Attributes:
        name: folder name (``backpack_dog``).
        class_noun: the class token from the CSV (``backpack``, ``stuffed animal``).
        live: True for cats and dogs (they use the live-subject prompts).
        images: the subject's photos, sorted by file name.
    """

    name: str
    class_noun: str
    live: bool
    images: tuple[Path, ...]


@dataclass(frozen=True)
class DreamBenchPair:
    """One (subject, prompt) evaluation pair.

    Attributes:
        subject, class_noun, live: copied from the subject.
        prompt_index: 0-24, the template's position in its list.
        template: the template with ``{0}`` (unique token) and ``{1}`` (class noun).
        prompt: the rendered prompt.
        kind: one of :data:`PROMPT_KINDS`.
        references: the reference photo(s) chosen for this pair.
    """

    subject: str
    class_noun: str
    live: bool
    prompt_index: int
    template: str
    prompt: str
    kind: str
    references: tuple[Path, ...]

    @property
    def key(self) -> str:
        """Stable id ``<subject>/<prompt_index:02d>`` used in result files."""
        return f"{self.subject}/{self.prompt_index:02d}"


@dataclass
class DreamBench:
    """The parsed benchmark: subjects, both prompt lists and the 750 pairs (in file order)."""

    root: Path
    subjects: dict[str, DreamBenchSubject]
    object_templates: tuple[str, ...]
    live_templates: tuple[str, ...]
    pairs: list[DreamBenchPair] = field(default_factory=list)

    def templates_for(self, subject: str) -> tuple[str, ...]:
        return self.live_templates if self.subjects[subject].live else self.object_templates


def render_prompt(template: str, class_noun: str, unique_token: str = "") -> str:
    """``'a {0} {1} in the snow'`` -> ``'a dog in the snow'`` (spaces collapsed)."""
    return " ".join(template.format(unique_token, class_noun).split())


def classify_template(template: str) -> str:
    """The prompt kind of a DreamBench template (see the module docstring for the rule)."""
    head = template.split("{0}", 1)[0].split()
    if head and head[0].lower() in ("a", "an"):
        head = head[1:]
    if head:
        return PROPERTY_MODIFICATION
    if _ACCESSORY_WORDS.search(template):
        return ACCESSORIZATION
    return RECONTEXTUALIZATION


def parse_prompts_and_classes(
    path: str | Path,
) -> tuple[dict[str, str], tuple[str, ...], tuple[str, ...]]:
    """Parse ``prompts_and_classes.txt`` -> ``(class by subject, object templates, live templates)``.

    Raises ValueError naming the file and line when the layout is not the original one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DreamBench prompt file not found: {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    classes: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    heading = ""
    in_csv = in_list = False
    current: list[str] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        where = f"{path}:{number}"
        if in_list:
            if line.startswith("]"):
                in_list = False
                kind = "live" if "live" in heading.lower() else "object"
                if kind in lists:
                    raise ValueError(f"{where}: a second {kind} prompt list")
                lists[kind] = current
                continue
            if not line:
                continue
            match = re.match(r"""^(['"])(.*?)\1""", line)
            if not match:
                raise ValueError(f"{where}: expected a quoted prompt template, got {line!r}")
            template = ast.literal_eval(match.group(0))
            if "{0}" not in template or "{1}" not in template:
                raise ValueError(f"{where}: template {template!r} lacks {{0}} or {{1}}")
            current.append(template)
            continue
        if line.lower().replace(" ", "") == "subject_name,class":
            in_csv = True
            continue
        if in_csv:
            if not line:
                in_csv = False
                continue
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"{where}: expected 'subject_name,class', got {line!r}")
            if parts[0] in classes:
                raise ValueError(f"{where}: subject {parts[0]!r} listed twice")
            classes[parts[0]] = parts[1]
            continue
        if line.startswith("prompt_list") and line.endswith("["):
            in_list, current = True, []
            continue
        if line:
            heading = line
    if in_list:
        raise ValueError(f"{path}: a prompt list is not closed with ']'")
    missing = [k for k in ("object", "live") if k not in lists]
    if not classes:
        raise ValueError(f"{path}: no 'subject_name,class' table found")
    if missing:
        raise ValueError(
            f"{path}: no {' or '.join(missing)} prompt list found "
            "(expected 'Object Prompts' and 'Live Subject Prompts')"
        )
    return classes, tuple(lists["object"]), tuple(lists["live"])


def parse_reference_choice(spec: str) -> tuple[str, int | str | None]:
    """``first`` | ``index:N`` | ``protocol:FILE`` -> ``(mode, argument)``."""
    if spec == "first":
        return "first", None
    mode, _, arg = spec.partition(":")
    if mode == "index":
        if not arg.isdigit():
            raise ValueError(f"--reference {spec!r}: index:N needs a non-negative integer N")
        return "index", int(arg)
    if mode == "protocol" and arg:
        return "protocol", arg
    raise ValueError(f"--reference {spec!r}: choose first, index:N or protocol:FILE")


def _subject_images(root: Path, name: str) -> tuple[Path, ...]:
    """The subject's photos, sorted; a photo's cut-out ``<photo>_seg.png`` is not one."""
    from cgrpo.rewards.segmentation.segment import cutout_path

    folder = root / name
    if not folder.is_dir():
        raise FileNotFoundError(
            f"DreamBench subject folder missing: {folder} (listed in {root / PROMPTS_FILE})"
        )
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    cutouts = {cutout_path(p) for p in files}
    images = tuple(sorted(p for p in files if p not in cutouts))
    if not images:
        raise FileNotFoundError(f"DreamBench subject folder {folder} has no images")
    return images


def resolve_protocol_path(arg: str, root: Path) -> Path:
    """A protocol file as given, else relative to the dataset root."""
    candidate = Path(arg).expanduser()
    if candidate.is_file():
        return candidate
    if (root / arg).is_file():
        return root / arg
    raise FileNotFoundError(f"--reference protocol file not found: {arg} (also tried {root / arg})")


def load_protocol(path: str | Path, bench: DreamBench) -> dict[tuple[str, str], tuple[Path, ...]]:
    """Map a protocol JSON (list of ``{prompt, image_paths}``) onto local files.

    Returns ``{(subject, token-free prompt): reference paths}``. The subject is the folder
    holding each image (``dreambooth/dataset/<subject>/<file>`` -> ``<root>/<subject>/<file>``).
    """
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"protocol {path} is not valid JSON: {e}") from None
    if not isinstance(entries, list):
        raise ValueError(f"protocol {path}: expected a JSON list of {{prompt, image_paths}}")
    out: dict[tuple[str, str], tuple[Path, ...]] = {}
    for i, entry in enumerate(entries):
        where = f"protocol {path} entry {i}"
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("prompt"), str)
            or not isinstance(entry.get("image_paths"), list)
            or not entry["image_paths"]
        ):
            raise ValueError(f"{where}: expected {{'prompt': str, 'image_paths': [str, ...]}}")
        mapped = []
        subjects = set()
        for raw in entry["image_paths"]:
            p = Path(str(raw))
            subject = p.parent.name
            if subject not in bench.subjects:
                raise ValueError(f"{where}: image {raw!r} is not under a DreamBench subject folder")
            local = bench.root / subject / p.name
            if not local.is_file():
                raise FileNotFoundError(f"{where}: {raw!r} maps to {local}, which does not exist")
            subjects.add(subject)
            mapped.append(local)
        if len(subjects) != 1:
            raise ValueError(f"{where}: images come from several subjects {sorted(subjects)}")
        key = (subjects.pop(), " ".join(entry["prompt"].split()))
        if key in out and out[key] != tuple(mapped):
            raise ValueError(f"{where}: pair {key} already has references {out[key]}")
        out[key] = tuple(mapped)
    return out


def load_dreambench(
    root: str | Path, reference: str = "first", unique_token: str = ""
) -> DreamBench:
    """Parse a DreamBench folder and build its 750 pairs with the chosen references.

    Args:
        root: the dataset folder (holding ``prompts_and_classes.txt``).
        reference: ``first`` | ``index:N`` | ``protocol:FILE`` (see the module docstring).
        unique_token: the ``{0}`` token (empty for zero-shot models; ``sks`` for DreamBooth).
    """
    root = Path(root).expanduser().resolve()
    if not (root / PROMPTS_FILE).is_file():
        raise FileNotFoundError(f"not a DreamBench folder: {root} has no {PROMPTS_FILE}")
    classes, object_templates, live_templates = parse_prompts_and_classes(root / PROMPTS_FILE)
    subjects = {
        name: DreamBenchSubject(name, noun, noun in LIVE_CLASSES, _subject_images(root, name))
        for name, noun in classes.items()
    }
    bench = DreamBench(root, subjects, object_templates, live_templates)
    mode, arg = parse_reference_choice(reference)
    protocol = (
        load_protocol(resolve_protocol_path(str(arg), root), bench) if mode == "protocol" else None
    )
    used: set[tuple[str, str]] = set()
    for subject in subjects.values():
        for index, template in enumerate(bench.templates_for(subject.name)):
            if mode == "first":
                refs: tuple[Path, ...] = (subject.images[0],)
            elif mode == "index":
                assert isinstance(arg, int)
                if arg >= len(subject.images):
                    raise ValueError(
                        f"--reference index:{arg}: subject {subject.name!r} has only "
                        f"{len(subject.images)} images"
                    )
                refs = (subject.images[arg],)
            else:
                assert protocol is not None
                lookup = (subject.name, render_prompt(template, subject.class_noun))
                if lookup not in protocol:
                    raise ValueError(
                        f"protocol {arg}: no entry for subject {subject.name!r} "
                        f"prompt {lookup[1]!r}"
                    )
                refs = protocol[lookup]
                used.add(lookup)
            bench.pairs.append(
                DreamBenchPair(
                    subject=subject.name,
                    class_noun=subject.class_noun,
                    live=subject.live,
                    prompt_index=index,
                    template=template,
                    prompt=render_prompt(template, subject.class_noun, unique_token),
                    kind=classify_template(template),
                    references=refs,
                )
            )
    if protocol is not None and len(used) != len(protocol):
        extra = sorted(set(protocol) - used)[:3]
        raise ValueError(f"protocol {arg}: entries match no DreamBench pair, e.g. {extra}")
    return bench


def dreambench_items(bench: DreamBench, subjects: set[str] | None = None) -> list[Any]:
    """The pairs of ``bench`` as :class:`~cgrpo.evaluation.harness.EvalItem` s.

    ``subjects`` keeps only those (each item keeps its index in the full benchmark, so its
    noise seed does not change). Pairs with the same reference files share one tensor;
    several references of one pair are resized to the first one's size so they stack.
    Metadata (what rewards read): ``subject``, ``class_noun``, ``live``, ``kind`` and
    ``reference_paths`` (the reference files, e.g. to find ``<ref>_seg.png`` cut-outs).
    """
    import torch

    from cgrpo.data.base import load_image
    from cgrpo.evaluation.harness import EvalItem

    stacks: dict[tuple[Path, ...], torch.Tensor] = {}

    def references(paths: tuple[Path, ...]) -> torch.Tensor:
        if paths not in stacks:
            refs = [load_image(p, "DreamBench reference image") for p in paths]
            size = tuple(refs[0].shape[1:])
            refs = [
                r
                if tuple(r.shape[1:]) == size
                else torch.nn.functional.interpolate(
                    r[None], size=size, mode="bilinear", antialias=True
                )[0]
                for r in refs
            ]
            stacks[paths] = torch.stack(refs)
        return stacks[paths]

    items = []
    for i, pair in enumerate(bench.pairs):
        if subjects is not None and pair.subject not in subjects:
            continue
        items.append(
            EvalItem(
                index=i,
                key=pair.key,
                subject=pair.subject,
                prompt_index=pair.prompt_index,
                prompt=pair.prompt,
                kind=pair.kind,
                references=references(pair.references),
                metadata={
                    "subject": pair.subject,
                    "class_noun": pair.class_noun,
                    "live": pair.live,
                    "kind": pair.kind,
                    "reference_paths": [str(p) for p in pair.references],
                },
                reference_label=";".join(str(p) for p in pair.references),
            )
        )
    return items


__all__ = [
    "ACCESSORIZATION",
    "LIVE_CLASSES",
    "PROMPT_KINDS",
    "PROPERTY_MODIFICATION",
    "RECONTEXTUALIZATION",
    "DreamBench",
    "DreamBenchPair",
    "DreamBenchSubject",
    "classify_template",
    "dreambench_items",
    "load_dreambench",
    "load_protocol",
    "parse_prompts_and_classes",
    "parse_reference_choice",
    "render_prompt",
]
