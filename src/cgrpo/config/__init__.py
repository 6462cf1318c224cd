"""Configuration: typed dataclasses, YAML presets, command-line overrides."""

from cgrpo.config.schema import ConfigError, describe, option, parse, to_dict
from cgrpo.config.train import Config, config_from_dict, load_config, save_config

__all__ = [
    "Config",
    "ConfigError",
    "config_from_dict",
    "describe",
    "load_config",
    "option",
    "parse",
    "save_config",
    "to_dict",
]
