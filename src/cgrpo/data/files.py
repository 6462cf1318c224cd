"""Datasets read from files: SynCD-style JSON lists ("syncd") and JSON Lines ("jsonl").

Both yield :class:`cgrpo.data.base.Example`. Relative paths resolve against ``root``
(default: the data file's directory). Reference masks are only those an entry names (jsonl
``masks``). A ``<reference stem>_seg.png`` beside a reference is, by the paper's convention,
an RGB cut-out of the subject, not a mask: it is not read here; ``dino-seg`` finds it from
``metadata["reference_paths"]`` (see :mod:`cgrpo.rewards.segmentation.segment`).

Bad entries (missing file, empty prompt, malformed record, unreadable image) are reported
with the entry's position and the offending path (:class:`~cgrpo.data.base.BadItem`).
``on_error: stop`` raises at the first one; ``on_error: skip`` drops it, counts it
(``dataset.skipped``, ``dataset.problems``) and logs it once. Existence checks run when the
dataset is built; an unreadable image is only found when its example is loaded:
``dataset[i]`` then takes the next good entry (skip) or raises, ``dataset.load(i)`` always
raises. Training builds with ``skip`` and loads with ``load``, to skip and count bad items
up to ``data.max_bad_fraction`` (:mod:`cgrpo.data.skipping`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cgrpo.config import ConfigError, option, parse
from cgrpo.data.base import DATASETS, BadItem, Example, load_image

log = logging.getLogger(__name__)

ON_ERROR = ("stop", "skip")
MASK_MODES = ("auto", "none", "required")
SPLITS = {
    "train": "train",
    "heldout": "heldout",
    "eval": "heldout",
    "test": "heldout",
    "all": "all",
}
_PREFIX = "data.options"


@dataclass
class _CommonOptions:
    path: str = option(help="the data file")
    root: str | None = option(None, "base directory of relative paths; null = the data file's")
    on_error: str = option(
        "stop",
        "bad entries: stop (raise, naming the entry) or skip (count them and log once)",
        choices=ON_ERROR,
    )
    masks: str = option(
        "auto",
        "reference masks (jsonl 'masks'; <ref>_seg.png is a cut-out, not a mask): auto "
        "(those an entry names), none (ignore them), or required (every entry names them)",
        choices=MASK_MODES,
    )
    heldout_count: int = option(
        0,
        "entries at the end of the file kept for split heldout (0: every split sees every entry)",
        min=0,
    )


@dataclass
class SyncdOptions(_CommonOptions):
    """``data.options`` of ``syncd``: a JSON list of ``{ref_img, img, text, category, ...}``."""

    embedding_keys: list[str] = option(
        default_factory=list,
        help="entry fields naming "
        "per-sample embedding files (resolved, checked, passed "
        "in metadata)",
    )


@dataclass
class JsonlOptions(_CommonOptions):
    """``data.options`` of ``jsonl``: one ``{prompt, references, masks?, key?, metadata?}``
    object per line."""


class BadEntry(ValueError):
    """A record that cannot become an :class:`Example` (message names the field or path)."""


@dataclass
class _Entry:
    where: str  # "entry 3" / "line 4": how errors point at it
    prompt: str
    references: list[Path]
    masks: list[Path] | None
    metadata: dict[str, Any] = field(default_factory=dict)
    key: str = ""


def _resolve(root: Path, value: Any, what: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise BadEntry(f"{what} must be a non-empty path string, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def _path_list(root: Path, value: Any, what: str) -> list[Path]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise BadEntry(f"{what} must be a path or a non-empty list of paths, got {value!r}")
    return [_resolve(root, v, f"{what}[{i}]") for i, v in enumerate(items)]


def _prompt(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadEntry(f"empty prompt ({what} = {value!r})")
    return value.strip()


def _finish(entry: _Entry, mode: str) -> _Entry:
    """Check that every named file exists and settle the masks according to ``mode``."""
    for i, ref in enumerate(entry.references):
        if not ref.is_file():
            raise BadEntry(f"reference {i} not found: {ref}")
    if mode == "none":
        entry.masks = None
    elif entry.masks is None and mode == "required":
        raise BadEntry("the entry names no masks (masks: required)")
    if entry.masks is not None:
        if len(entry.masks) != len(entry.references):
            raise BadEntry(f"{len(entry.masks)} masks for {len(entry.references)} references")
        for i, m in enumerate(entry.masks):
            if not m.is_file():
                raise BadEntry(f"mask {i} not found: {m}")
    return entry


def _load_mask(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """``[1, H, W]`` float in {0, 1} (1 = subject), resized (nearest) to ``size`` if needed."""
    mask = (load_image(path, "mask").mean(dim=0, keepdim=True) > 0.5).float()
    if tuple(mask.shape[-2:]) != size:
        mask = F.interpolate(mask[None], size=size, mode="nearest")[0]
    return mask


def _same_size(images: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    # Example.references is one tensor; later references take the first one's size.
    out = [
        im
        if tuple(im.shape[-2:]) == size
        else F.interpolate(
            im[None], size=size, mode="bilinear", align_corners=False, antialias=True
        )[0].clamp(0, 1)
        for im in images
    ]
    return torch.stack(out)


class FileDataset:
    """Examples from a parsed list of entries; see the module docstring for error handling."""

    def __init__(
        self,
        name: str,
        source: Path,
        records: list[tuple[str, Any]],
        parse_entry,
        options: _CommonOptions,
        split: str,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"{name} has no split {split!r}; choose one of {', '.join(SPLITS)}")
        self.name, self.source, self.options, self.split = name, source, options, split
        self.problems: list[str] = []
        self._warned_at_load = False
        self._broken: set[int] = set()  # entries whose images failed to load (skip mode)
        n_held = options.heldout_count
        if n_held and n_held >= len(records):
            raise ConfigError(
                f"{_PREFIX}.heldout_count",
                n_held,
                f"must be less than the {len(records)} entries of {source}",
            )
        if n_held and SPLITS[split] == "train":
            records = records[:-n_held]
        elif n_held and SPLITS[split] == "heldout":
            records = records[-n_held:]
        entries = []
        for where, raw in records:
            try:
                entries.append(_finish(parse_entry(raw, where), options.masks))
            except BadEntry as e:
                self._bad(where, str(e))
        for problem in self.problems:
            log.warning("skipping a bad entry: %s", problem)
        if not entries:
            raise ValueError(
                f"{name} {source}: no usable entries in split {split!r}"
                + (f" ({len(self.problems)} skipped)" if self.problems else "")
            )
        self.entries = entries

    @property
    def skipped(self) -> int:
        """Bad entries dropped so far (at build time and while loading)."""
        return len(self.problems)

    def _bad(self, where: str, problem: str) -> None:
        message = f"{self.name} {self.source} {where}: {problem}"
        if self.options.on_error == "stop":
            raise BadItem(message)
        self.problems.append(message)

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, index: int) -> Example:
        """The example at ``index``, or :class:`BadItem` naming the entry and its file
        (never another entry in its place)."""
        n = len(self.entries)
        if not -n <= index < n:
            raise IndexError(f"{self.name} index {index} out of range for {n} examples")
        entry = self.entries[index]
        try:
            return self._load(entry)
        except BadItem:
            raise
        except (OSError, ValueError) as e:
            raise BadItem(f"{self.name} {self.source} {entry.where}: {e}") from None

    def __getitem__(self, index: int) -> Example:
        n = len(self.entries)
        if not -n <= index < n:
            raise IndexError(f"{self.name} index {index} out of range for {n} examples")
        for attempt in range(n):
            position = (index + attempt) % n
            if position in self._broken:
                continue
            try:
                return self.load(position)
            except BadItem as e:
                if self.options.on_error == "stop":
                    raise
                self.problems.append(str(e))
                self._broken.add(position)
                if not self._warned_at_load:
                    self._warned_at_load = True
                    log.warning(
                        "%s; using the next entry (further load failures are counted "
                        "in .skipped without a warning)",
                        self.problems[-1],
                    )
        raise ValueError(f"{self.name} {self.source}: no entry could be loaded")

    def _load(self, entry: _Entry) -> Example:
        images = [load_image(p, "reference image") for p in entry.references]
        size = tuple(images[0].shape[-2:])
        masks = None
        if entry.masks is not None:
            masks = torch.stack([_load_mask(m, size) for m in entry.masks])
        meta = dict(entry.metadata)
        meta.setdefault("reference_paths", [str(p) for p in entry.references])
        return Example(entry.prompt, _same_size(images, size), masks, meta, entry.key)


def _root(options: _CommonOptions, source: Path) -> Path:
    if options.root is None:
        return source.parent
    root = Path(options.root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{_PREFIX}.root", options.root, "directory not found")
    return root


def _source(options: _CommonOptions) -> Path:
    source = Path(options.path).expanduser()
    if not source.is_file():
        raise ConfigError(f"{_PREFIX}.path", options.path, "file not found")
    return source


@DATASETS.register("syncd")
def build_syncd(options: dict[str, Any], split: str) -> FileDataset:
    """SynCD-style JSON: a list (or a mapping of id -> entry) of records with ``ref_img``
    (path or list of paths), ``text`` (the prompt), optional ``img`` (the pair's target image,
    kept as ``metadata["target_image"]``, not loaded), ``category`` and any other fields
    (copied into metadata; those named in ``embedding_keys`` are resolved and checked)."""
    opts = parse(SyncdOptions, options, _PREFIX)
    source = _source(opts)
    root = _root(opts, source)
    try:
        data = json.loads(source.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"syncd {source}: not valid JSON ({e})") from None
    if isinstance(data, dict):
        data = [dict(v, id=v.get("id", k)) if isinstance(v, dict) else v for k, v in data.items()]
    if not isinstance(data, list):
        raise ValueError(
            f"syncd {source}: expected a JSON list of entries, got {type(data).__name__}"
        )

    def parse_entry(raw: Any, where: str) -> _Entry:
        if not isinstance(raw, dict):
            raise BadEntry(f"expected a JSON object, got {type(raw).__name__}")
        meta = {k: v for k, v in raw.items() if k not in ("ref_img", "img", "text")}
        if raw.get("img") is not None:
            meta["target_image"] = str(_resolve(root, raw["img"], "img"))
        for key in opts.embedding_keys:
            path = _resolve(root, raw.get(key), key)
            if not path.is_file():
                raise BadEntry(f"{key} file not found: {path}")
            meta[key] = str(path)
        key = str(raw.get("id", f"{source.stem}/{where.split()[-1]}"))
        return _Entry(
            where,
            _prompt(raw.get("text"), "text"),
            _path_list(root, raw.get("ref_img"), "ref_img"),
            None,
            meta,
            key,
        )

    records = [(f"entry {i}", raw) for i, raw in enumerate(data)]
    return FileDataset("syncd", source, records, parse_entry, opts, split)


@DATASETS.register("jsonl")
def build_jsonl(options: dict[str, Any], split: str) -> FileDataset:
    """JSON Lines: ``{"prompt": ..., "references": [paths], "masks": [paths]?, "key": ...?,
    "metadata": {...}?}`` per line (other fields go to metadata; blank lines are ignored)."""
    opts = parse(JsonlOptions, options, _PREFIX)
    source = _source(opts)
    root = _root(opts, source)
    records = []
    for number, line in enumerate(source.read_text().splitlines(), start=1):
        if line.strip():
            records.append((f"line {number}", line))

    def parse_entry(line: str, where: str) -> _Entry:
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadEntry(f"not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise BadEntry(f"expected a JSON object, got {type(raw).__name__}")
        meta = raw.get("metadata") or {}
        if not isinstance(meta, dict):
            raise BadEntry(f"metadata must be an object, got {meta!r}")
        meta = {
            **{
                k: v
                for k, v in raw.items()
                if k not in ("prompt", "references", "masks", "key", "metadata")
            },
            **meta,
        }
        masks = raw.get("masks")
        if masks is not None:
            masks = _path_list(root, masks, "masks")
        key = str(raw.get("key", f"{source.stem}/{where.split()[-1]}"))
        return _Entry(
            where,
            _prompt(raw.get("prompt"), "prompt"),
            _path_list(root, raw.get("references"), "references"),
            masks,
            meta,
            key,
        )

    return FileDataset("jsonl", source, records, parse_entry, opts, split)


__all__ = [
    "BadEntry",
    "FileDataset",
    "JsonlOptions",
    "SyncdOptions",
    "build_jsonl",
    "build_syncd",
]
