"""Functions the diverse-axolotl task YAMLs name with `!function utils.<name>`.

lm-eval loads this file by path (once per `!function` tag), so it must stay importable on its own: no imports from
`diverse_axolotl`, and everything done at import is idempotent.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
import types


# -------------------------------------------------------------------------------------------- local data files
#: dataset_kwargs that reach `datasets.load_dataset`; the other keyword arguments are task metadata (version, ...).
LOAD_KWARGS = ("column_names", "keep_default_na")


def local_files(data_dir=None, data_files=None, **kwargs):
    """The task's dataset from files under the evaluation data folder (lm-eval's `custom_dataset` hook).

    lm-eval calls this with the task's metadata and dataset_kwargs as keyword arguments; diverse-axolotl passes
    the folder as metadata `data_dir` (TaskManager(metadata=...)), so the YAMLs name files relative to it and
    need no rewriting. JSON (lines, optionally .gz) or CSV, by the file name.
    """
    import datasets

    if not data_dir:
        raise ValueError("no evaluation data folder: pass metadata data_dir (diverse-axolotl's eval data_dir)")
    files = {split: os.path.join(str(data_dir), rel) for split, rel in (data_files or {}).items()}
    builder = "csv" if next(iter(files.values())).endswith(".csv") else "json"
    options = {key: kwargs[key] for key in LOAD_KWARGS if key in kwargs}
    return datasets.load_dataset(builder, data_files=files, **options)


# ---------------------------------------------------------------------------------------------------------- ARC
def process_arc(dataset):
    """Original ARC rows -> the hub layout lm-eval's arc tasks read: {id, question, choices: {text, label}, answerKey}."""

    def flatten(doc):
        choices = doc["question"]["choices"]
        return {
            "id": doc["id"],
            "question": doc["question"]["stem"],
            "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]},
            "answerKey": doc["answerKey"],
        }

    return dataset.map(flatten, remove_columns=dataset.column_names)


# ------------------------------------------------------------------------------------------------------- IFEval
class _NltkWithoutPunkt(types.ModuleType):
    """nltk as lm-eval's IFEval checkers see it, with a word tokenizer that needs no punkt data.

    nltk.word_tokenize splits sentences with punkt first; `preserve_line=True` skips that step and runs the same
    Treebank word tokenizer on the whole text. Everything else is the real nltk.
    """

    def __init__(self, real):
        super().__init__("nltk")
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def word_tokenize(self, text, language="english", preserve_line=False):
        return self._real.word_tokenize(text, language=language, preserve_line=True)


def _ifeval_offline():
    """lm-eval's IFEval modules, imported without NLTK downloads and patched so no check needs punkt data.

    Importing `instructions_util` calls nltk.download('punkt_tab') when the data is absent: that call is made a
    no-op for the import. Then `count_sentences` (punkt upstream) uses lm-eval's own regex `split_into_sentences`,
    and the capital-words check tokenises words without punkt's sentence split.
    """
    import nltk

    real_download = nltk.download
    nltk.download = lambda *args, **kwargs: False
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from lm_eval.tasks.ifeval import instructions_util
            from lm_eval.tasks.ifeval import utils as ifeval_utils
    finally:
        nltk.download = real_download
    if not getattr(instructions_util, "_diverse_axolotl_offline", False):
        instructions_util.count_sentences = lambda text: len(instructions_util.split_into_sentences(text))
        instructions_util.nltk = _NltkWithoutPunkt(nltk)
        instructions_util._diverse_axolotl_offline = True
    return ifeval_utils


def process_ifeval(doc, results):
    """lm-eval's IFEval scoring of one response (strict and loose, prompt and instruction level)."""
    return _ifeval_offline().process_results(doc, results)


def agg_inst_level_acc(items):
    return _ifeval_offline().agg_inst_level_acc(items)


# ----------------------------------------------------------------------------------------------- HumanEval/MBPP
CODE_TIMEOUT_S = float(os.environ.get("DIVERSE_AXOLOTL_CODE_TIMEOUT", "10"))


def run_python(program: str, timeout: float = CODE_TIMEOUT_S) -> bool:
    """True when `program` exits 0 within `timeout` seconds.

    It runs in a separate, isolated (`-I`) Python process in an empty temporary folder: this is NOT a sandbox; the
    tasks using it are marked `unsafe_code: true`, so lm-eval runs them only with confirm_run_unsafe_code.
    """
    with tempfile.TemporaryDirectory(prefix="da-code-") as tmp:
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-c", program],
                cwd=tmp,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=timeout,
                env={"PATH": os.environ.get("PATH", ""), "PYTHONHASHSEED": "0"},
            )
        except subprocess.TimeoutExpired:
            return False
    return proc.returncode == 0


def process_humaneval(doc, results):
    """pass@1 of one greedy completion: prompt + completion, then the task's tests and check(entry_point)."""
    program = doc["prompt"] + results[0] + "\n\n" + doc["test"] + f"\n\ncheck({doc['entry_point']})\n"
    return {"pass@1": run_python(program)}


def mbpp_test_split(dataset):
    """MBPP's standard test split: task ids 11-510."""
    return dataset.filter(lambda doc: 11 <= int(doc["task_id"]) <= 510)


def mbpp_prompt_split(dataset):
    """MBPP's few-shot split: task ids 2-4 (the three examples the original paper and lm-eval use)."""
    return dataset.filter(lambda doc: 2 <= int(doc["task_id"]) <= 4)


def mbpp_extract_code(text: str) -> str:
    """The generated program: everything before the first [DONE] (generation also stops there), minus ``` fences."""
    code = text.split("[DONE]")[0]
    lines = [line for line in code.splitlines() if not line.strip().startswith("```")]
    return "\n".join(lines)


def process_mbpp(doc, results):
    """pass@1 of one greedy completion against the task's three asserts (after its setup code)."""
    tests = "\n".join(doc["test_list"])
    program = (doc.get("test_setup_code") or "") + "\n" + mbpp_extract_code(results[0]) + "\n\n" + tests + "\n"
    return {"pass@1": run_python(program)}
