"""diverse-axolotl: choose a slice of an instruction pool, finetune on it with Axolotl, repeat."""

__version__ = "0.1.0"
