"""cgrpo: Customized-GRPO for subject-driven image generators with competing rewards."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cgrpo")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
