"""diverse-axolotl: choose a slice of an instruction pool, finetune on it with Axolotl, repeat."""

from importlib import metadata as _metadata

try:  # one version string: pyproject.toml's, as installed
    __version__ = _metadata.version("diverse-axolotl")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
