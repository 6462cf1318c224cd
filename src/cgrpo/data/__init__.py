"""Training data: examples of (prompt, reference images, optional masks), by name."""

# Built-in datasets register themselves in DATASETS on import.
import cgrpo.data.files  # noqa: F401
import cgrpo.data.hf  # noqa: F401  (imports datasets only when an hf dataset is built)
import cgrpo.world.dataset  # noqa: F401
from cgrpo.data.base import DATASETS, Example, build_dataset, image_to_tensor, load_image

__all__ = ["DATASETS", "Example", "build_dataset", "image_to_tensor", "load_image"]
