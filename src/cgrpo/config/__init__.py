"""Configuration: typed dataclasses, YAML presets, command-line overrides."""

from cgrpo.config.schema import ConfigError, describe, option, parse, to_dict

__all__ = ["ConfigError", "describe", "option", "parse", "to_dict"]
