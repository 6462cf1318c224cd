"""Datasets of the Hugging Face ``datasets`` library, read from a local path ("hf").

``data.name: hf`` reads a dataset written by ``Dataset.save_to_disk`` (memory-mapped; a
``DatasetDict`` folder too, one split chosen by ``dataset_split``), a folder of ``.parquet``
files (read in name order, into memory) or one ``.parquet`` file. Nothing is downloaded.

A column mapping (``columns``) names the prompt, the reference image(s), optional masks,
the subject name and a key; each left ``null`` is found among common names, SynCD's first
(``text``, ``ref_img``, ``category``, ``id``). An image cell may be a ``datasets.Image``
(embedded bytes or a path), a list of them, a path string or raw bytes; paths resolve against
``root`` (default: the dataset's folder). Images are decoded only when their example is
loaded, by :func:`cgrpo.image_io.read_image` with its pixel limit. Bad rows (empty prompt, no
reference, a missing file, an unreadable image) follow the rules of the other file datasets
(:mod:`cgrpo.data.files`): ``on_error: stop`` names the row, ``skip`` counts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cgrpo.config import ConfigError, option, parse
from cgrpo.data.base import DATASETS, Example
from cgrpo.data.files import BadEntry, FileDataset, _CommonOptions, _Entry, _prompt, _same_size
from cgrpo.image_io import read_image

_PREFIX = "data.options"
#: Column names tried, in order, for each role left null in ``columns``.
DEFAULT_COLUMNS = {
    "prompt": ("prompt", "text", "caption"),
    "references": ("references", "reference", "ref_img", "ref_image", "image"),
    "masks": ("masks", "mask", "reference_masks"),
    "subject": ("subject", "category", "class_name", "class"),
    "key": ("key", "id"),
}
_REQUIRED = ("prompt", "references")


@dataclass
class HfColumns:
    """``data.options.columns``: which column plays which part (null = the first of the
    common names that the dataset has)."""

    prompt: str | None = option(None, "prompt text; null: prompt, text or caption")
    references: str | None = option(
        None, "reference image(s); null: references, reference, ref_img, ref_image or image"
    )
    masks: str | None = option(
        None, "subject masks (white = subject), one per reference; null: masks, mask if present"
    )
    subject: str | None = option(
        None, "subject name (metadata['subject']); null: subject, category, class_name, class"
    )
    key: str | None = option(None, "item identifier; null: key or id, else the row number")


@dataclass
class HfOptions(_CommonOptions):
    """``data.options`` of ``hf``."""

    path: str = option(
        help="a save_to_disk folder, a folder of .parquet files or one .parquet file"
    )
    root: str | None = option(None, "base directory of relative image paths; null = the dataset's")
    dataset_split: str | None = option(
        None, "split of a saved DatasetDict (null: its only split, else 'train')"
    )
    columns: HfColumns = option(default_factory=HfColumns, help="column mapping")


class _Cell:
    """One image of a row: embedded bytes (read from the table when loaded) or a file."""

    def __init__(self, column: str, row: int, index: int | None, path: Path | None) -> None:
        self.column, self.row, self.index, self.path = column, row, index, path

    def is_file(self) -> bool:  # the existence check of cgrpo.data.files
        return self.path is None or self.path.is_file()

    def __str__(self) -> str:
        where = f"column {self.column!r}" + ("" if self.index is None else f"[{self.index}]")
        return f"{self.path} ({where})" if self.path is not None else where


class HfDataset(FileDataset):
    """A :class:`~cgrpo.data.files.FileDataset` whose images live in an Arrow table."""

    def __init__(self, table: Any, *args: Any) -> None:
        self.table = table
        super().__init__(*args)

    def _load(self, entry: _Entry) -> Example:
        images = [self._read(c, "reference image") for c in entry.references]
        size = images[0].shape[:2]
        references = _same_size([torch.from_numpy(im).permute(2, 0, 1) for im in images], size)
        masks = None
        if entry.masks is not None:
            masks = []
            for cell in entry.masks:
                mask = torch.from_numpy(self._read(cell, "mask", "L") > 0.5).float()[None]
                if tuple(mask.shape[-2:]) != tuple(size):
                    mask = torch.nn.functional.interpolate(mask[None], size=size, mode="nearest")[0]
                masks.append(mask)
            masks = torch.stack(masks)
        meta = dict(entry.metadata)
        paths = [str(c.path) for c in entry.references if c.path is not None]
        if len(paths) == len(entry.references):  # dino-seg looks for <ref>_seg.png beside them
            meta.setdefault("reference_paths", paths)
        return Example(entry.prompt, references, masks, meta, entry.key)

    def _read(self, cell: _Cell, what: str, mode: str = "RGB"):
        name = f"{what} in {cell}"
        if cell.path is not None:
            return read_image(cell.path, name, mode)
        value = self.table.column(cell.column)[cell.row]
        if cell.index is not None:
            value = value[cell.index]
        data = value["bytes"].as_py() if _is_struct(value) else value.as_py()
        return read_image(data, name, mode)


def _is_struct(scalar: Any) -> bool:
    import pyarrow as pa

    return isinstance(scalar, pa.StructScalar)


def _cells(scalar: Any, column: str, row: int, root: Path, index: int | None = None) -> list:
    """The images of one cell, without reading their bytes (BadEntry if it holds none)."""
    import pyarrow as pa

    if not scalar.is_valid:
        return []
    if isinstance(scalar, pa.ListScalar | pa.LargeListScalar):
        if index is not None:
            raise BadEntry(f"column {column!r} holds nested lists")
        return [c for i, item in enumerate(scalar) for c in _cells(item, column, row, root, i)]
    if isinstance(scalar, pa.StructScalar):
        fields = {f.name for f in scalar.type}
        if "bytes" in fields and scalar["bytes"].is_valid:
            return [_Cell(column, row, index, None)]
        if "path" in fields and scalar["path"].is_valid:
            return [_Cell(column, row, index, _path(root, scalar["path"].as_py()))]
        raise BadEntry(f"column {column!r} holds an image with neither bytes nor path")
    if isinstance(scalar, pa.StringScalar | pa.LargeStringScalar):
        value = scalar.as_py()
        if not value.strip():
            raise BadEntry(f"column {column!r} holds an empty path")
        return [_Cell(column, row, index, _path(root, value))]
    # pyarrow's StringScalar is a BinaryScalar: strings (paths) are tested first
    if isinstance(scalar, pa.BinaryScalar | pa.LargeBinaryScalar):
        return [_Cell(column, row, index, None)]
    raise BadEntry(f"column {column!r} holds {scalar.type}, not an image, path or list of them")


def _path(root: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def _read_table(source: Path, dataset_split: str | None):
    """The Arrow table at ``source`` and the folder relative paths resolve against."""
    from cgrpo.extras import require_extra

    require_extra("datasets", "hf", "data.name hf")
    import pyarrow.parquet as pq

    if source.is_file():
        if source.suffix != ".parquet":
            raise ConfigError(
                f"{_PREFIX}.path", str(source), "expected a .parquet file or a folder"
            )
        return _parquet(pq, [source]), source.parent
    if not source.is_dir():
        raise ConfigError(f"{_PREFIX}.path", str(source), "not found")
    if (source / "dataset_dict.json").is_file() or (source / "state.json").is_file():
        import datasets

        loaded = datasets.load_from_disk(str(source))
        if isinstance(loaded, datasets.DatasetDict):
            splits = list(loaded)
            name = dataset_split or (splits[0] if len(splits) == 1 else "train")
            if name not in loaded:
                raise ConfigError(
                    f"{_PREFIX}.dataset_split", name, f"choose one of {', '.join(splits)}"
                )
            loaded = loaded[name]
        elif dataset_split is not None:
            raise ConfigError(
                f"{_PREFIX}.dataset_split", dataset_split, "the dataset has no splits (use null)"
            )
        if loaded._indices is not None:  # a selection saved without flattening
            loaded = loaded.flatten_indices()
        return loaded.data.table, source
    files = sorted(source.rglob("*.parquet"))
    if not files:
        raise ConfigError(
            f"{_PREFIX}.path",
            str(source),
            "holds neither a save_to_disk dataset (state.json / dataset_dict.json) "
            "nor .parquet files",
        )
    return _parquet(pq, files), source


def _parquet(pq: Any, files: list[Path]):
    import pyarrow as pa

    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f, memory_map=True))
        except (OSError, pa.ArrowException) as e:
            raise ValueError(f"hf {f}: not a readable parquet file ({e})") from None
    try:
        return pa.concat_tables(tables, promote_options="default")
    except pa.ArrowException as e:
        raise ValueError(
            f"hf {files[0].parent}: parquet files with different columns ({e})"
        ) from None


def _columns(given: HfColumns, names: list[str]) -> dict[str, str | None]:
    chosen: dict[str, str | None] = {}
    for role, candidates in DEFAULT_COLUMNS.items():
        name = getattr(given, role)
        if name is not None and name not in names:
            raise ConfigError(
                f"{_PREFIX}.columns.{role}", name, f"no such column; columns: {', '.join(names)}"
            )
        if name is None:
            name = next((c for c in candidates if c in names), None)
        if name is None and role in _REQUIRED:
            raise ConfigError(
                f"{_PREFIX}.columns.{role}",
                None,
                f"none of {', '.join(candidates)} is a column; name the column "
                f"(columns: {', '.join(names)})",
            )
        chosen[role] = name
    return chosen


@DATASETS.register("hf")
def build_hf(options: dict[str, Any], split: str) -> HfDataset:
    """A local ``datasets`` dataset (save_to_disk folder or Parquet); see the module docstring."""
    opts = parse(HfOptions, options, _PREFIX)
    source = Path(opts.path).expanduser()
    table, base = _read_table(source, opts.dataset_split)
    if opts.root is not None:
        base = Path(opts.root).expanduser()
        if not base.is_dir():
            raise ConfigError(f"{_PREFIX}.root", opts.root, "directory not found")
    cols = _columns(opts.columns, table.column_names)
    text_columns = {
        role: table.column(name).to_pylist()
        for role in ("prompt", "subject", "key")
        if (name := cols[role]) is not None
    }
    image_roles = {r: table.column(cols[r]) for r in ("references", "masks") if cols[r] is not None}
    used = {c for c in cols.values() if c is not None}
    extra = [c for c in table.column_names if c not in used and not _is_image(table.schema, c)]
    extra_values = {c: table.column(c).to_pylist() for c in extra}

    def parse_entry(row: int, where: str) -> _Entry:
        prompt = _prompt(text_columns["prompt"][row], cols["prompt"])
        refs = _cells(image_roles["references"][row], cols["references"], row, base)
        if not refs:
            raise BadEntry(f"no reference image (column {cols['references']!r})")
        masks = None
        if "masks" in image_roles:
            masks = _cells(image_roles["masks"][row], cols["masks"], row, base) or None
        meta: dict[str, Any] = {c: extra_values[c][row] for c in extra}
        subject = text_columns["subject"][row] if "subject" in text_columns else None
        if subject is not None:  # "category" is where the segmenting rewards look
            meta["subject"] = meta["category"] = str(subject)
        key = text_columns["key"][row] if "key" in text_columns else None
        key = str(key) if key is not None else f"{source.name}/{row}"
        return _Entry(where, prompt, refs, masks, meta, key)

    records = [(f"row {i}", i) for i in range(table.num_rows)]
    return HfDataset(table, "hf", source, records, parse_entry, opts, split)


def _is_image(schema: Any, column: str) -> bool:
    """Image-like columns (binary, image structs, lists of them) stay out of the metadata."""
    import pyarrow as pa

    tp = schema.field(column).type
    while pa.types.is_list(tp) or pa.types.is_large_list(tp):
        tp = tp.value_type
    return pa.types.is_binary(tp) or pa.types.is_large_binary(tp) or pa.types.is_struct(tp)


__all__ = ["DEFAULT_COLUMNS", "HfColumns", "HfDataset", "HfOptions", "build_hf"]
