"""Training data: examples of (prompt, reference images, optional masks), by name."""

import importlib
import importlib.util

from cgrpo.data.base import DATASETS, Example, build_dataset, image_to_tensor, load_image

_BUILTIN_MODULES = ("cgrpo.world.dataset", "cgrpo.data.files")
for _name in _BUILTIN_MODULES:
    if importlib.util.find_spec(_name) is not None:
        importlib.import_module(_name)

__all__ = ["DATASETS", "Example", "build_dataset", "image_to_tensor", "load_image"]
