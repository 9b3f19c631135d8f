"""`!function utils.local_files` for the MMLU YAMLs of this folder: the parent folder's function, loaded by path
(lm-eval resolves `!function` next to the YAML and loads the file on its own, outside any package)."""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "diverse_axolotl_task_utils", os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "utils.py")
)
_utils = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_utils)
local_files = _utils.local_files
