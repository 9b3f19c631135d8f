"""The recipe: one YAML file holding Axolotl's own keys plus our `selection` block.

Axolotl's keys (base_model, adapter, lora_r, sequence_len, ...) are passed through untouched and validated by
Axolotl itself (`validate_axolotl`, which imports Axolotl and is therefore slow). Our block is validated here with
pydantic, unknown keys rejected with a did-you-mean. Relative paths resolve against the recipe file's folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError, did_you_mean
from .evaluation.spec import EvalSpec

#: Keys the loop writes into the Axolotl config itself; a recipe setting them would be silently overridden.
LOOP_OWNED_AXOLOTL_KEYS = ("datasets", "dataset_prepared_path", "lora_model_dir")


class Strict(BaseModel):
    """Unknown keys and coerced values are refused: `seed: true` or `per_round: "6"` is a typo, not a number."""

    model_config = ConfigDict(extra="forbid", strict=True)


#: A path written as a YAML string (strict models accept only Path objects otherwise).
LaxPath = Annotated[Path, Field(strict=False)]


#: Keys of Axolotl's `datasets:` entries a pool may carry, so that an entry can be copied from an Axolotl config.
AXOLOTL_POOL_KEYS = ("type", "data_files", "split", "ds_type", "field_messages", "message_property_mappings")


class PoolSpec(Strict):
    path: LaxPath = Field(description="JSON list, JSONL (optionally .gz/.xz) or parquet file of rows; a folder (its"
                          " data files, or a save_to_disk dataset); or a glob such as data/*.jsonl")
    format: Literal["alpaca", "chat", "sharegpt", "completion"] = Field(
        "alpaca", description="alpaca: instruction/input/output; chat: messages; sharegpt: conversations of"
        " {from, value}; completion: text"
    )
    type: Optional[str] = Field(None, description="Axolotl's dataset type (alpaca, chat_template, completion); sets format")
    data_files: Optional[Union[str, list[str]]] = Field(None, description="as in Axolotl: files (or globs) inside path")
    split: Optional[str] = Field(None, description="the split of a save_to_disk DatasetDict (default: train)")
    ds_type: Optional[str] = Field(None, description="accepted as in Axolotl; the files' suffixes decide how they are read")
    field_messages: Optional[str] = Field(None, description="chat_template: messages (chat) or conversations (sharegpt)")
    message_property_mappings: Optional[dict[str, str]] = Field(None, description="chat_template: {role: from, content: value} for sharegpt")
    limit: Optional[int] = Field(None, gt=0, description="use only the first N rows of the file")
    empty_rows: Literal["skip", "fail"] = Field("skip", description="rows with an empty instruction or answer")
    dedup: bool = Field(False, description="drop exact duplicate rows (they are always counted)")

    @model_validator(mode="after")
    def _format_from_axolotl_type(self):
        """An Axolotl-style entry (`type`, `field_messages`, ...) decides the format; a contradicting `format` is refused."""
        if self.type is None:
            return self
        from .pools import format_from_axolotl

        try:
            fmt = format_from_axolotl(self.type, self.field_messages, self.message_property_mappings)
        except UserError as exc:
            raise ValueError(f"selection.pool: {exc}") from None
        if "format" in self.model_fields_set and self.format != fmt:
            raise ValueError(f"selection.pool: format {self.format} contradicts type {self.type} (which reads as {fmt}); keep one")
        self.format = fmt
        return self


class SelectorSpec(BaseModel):
    """`{name: kcenter, <param>: <value>, ...}`: the parameters sit beside the name."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ScorerSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class EmbeddingSpec(Strict):
    pooling: Literal["mean", "last"] = Field("mean", description="mean over non-pad tokens, or the last token")
    layer: int = Field(-1, description="hidden-state layer to pool (-1: the last)")
    max_length: int = Field(512, gt=0, description="tokens per row; longer rows are cut from the right")
    batch_tokens: int = Field(16384, gt=0, description="padded tokens per batch (rows are sorted by length)")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="auto: bfloat16 on a GPU and on a CPU with native bf16 measured faster than float32, else float32")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cache: bool = Field(True, description="reuse embeddings of the same pool, model, adapter and settings across runs")
    cache_dir: Optional[LaxPath] = Field(None, description="default: $DIVERSE_AXOLOTL_CACHE or ~/.cache/diverse-axolotl")


class SelectionSpec(Strict):
    pool: PoolSpec
    selector: SelectorSpec
    scorer: Optional[ScorerSpec] = None
    seed_size: int = Field(gt=0, description="round 0 trains on this many rows (chosen as `round0` says)")
    round0: Literal["random", "base"] = Field(
        "random",
        description="random: round 0 is seed_size uniformly random rows; base: the recipe's selector chooses them on"
        " the base model's embeddings (no adapter, nothing trained before it)",
    )
    per_round: int = Field(gt=0, description="rows added by the selector each round")
    rounds: int = Field(ge=0, description="selection rounds after round 0 (rounds + 1 trainings in all)")
    retrain_from_base: bool = Field(True, description="DiverseEvol: train each round from the base model")
    embedding: EmbeddingSpec = EmbeddingSpec()
    seed: int = 0

    @property
    def total_rows(self) -> int:
        return self.seed_size + self.rounds * self.per_round


class Recipe(BaseModel):
    """A loaded recipe: our block validated, Axolotl's keys kept as written (paths resolved)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, ignored_types=(functools.cached_property,))
    path: Path
    selection: SelectionSpec
    eval: Optional[EvalSpec] = None  # validated in load_recipe, where its errors get their own wording
    output_dir: Path
    axolotl: dict[str, Any]

    @field_validator("axolotl")
    @classmethod
    def _no_loop_owned_keys(cls, value):
        owned = [k for k in LOOP_OWNED_AXOLOTL_KEYS if k in value]
        if owned:
            raise ValueError(f"the loop sets {', '.join(owned)} itself each round; remove it from the recipe")
        return value

    @model_validator(mode="after")
    def _base_model_present(self):
        if "base_model" not in self.axolotl:
            raise ValueError("missing required key 'base_model' (an Axolotl key: the model folder to finetune)")
        return self

    @functools.cached_property
    def pool_sha256(self) -> str | None:
        from .pools import pool_sha256

        try:
            return pool_sha256(self.selection.pool.path, self.selection.pool.data_files)
        except UserError:
            return None

    @functools.cached_property
    def hash(self) -> str:
        """Hash of what decides the run's results: the pool by content (not by where it lies), our block, and
        Axolotl's keys. Selector and scorer enter with their validated parameters, defaults filled in, so writing
        a default out (`{name: kcenter, device: auto}`) is the same run as leaving it out."""
        selection = self.selection.model_dump(mode="json")
        selection["pool"]["path"] = self.pool_sha256
        for key in AXOLOTL_POOL_KEYS:  # unset ones leave the hash as it was; data_files are in pool_sha256
            if key == "data_files" or selection["pool"].get(key) is None:
                selection["pool"].pop(key, None)
        selection["selector"] = filled_params("selector", self.selection.selector)
        if self.selection.scorer is not None:
            selection["scorer"] = filled_params("scorer", self.selection.scorer)
        for key in ("cache", "cache_dir"):  # where embeddings are cached does not change any result
            selection["embedding"].pop(key, None)
        payload = {"selection": selection, "axolotl": self.axolotl}
        if self.eval is not None:
            payload["eval"] = self.eval.model_dump(mode="json")
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def resolved(self) -> dict[str, Any]:
        """The recipe as the run sees it, with absolute paths: printed by `validate`, saved in the run folder."""
        out = {
            **self.axolotl,
            "output_dir": str(self.output_dir),
            "selection": self.selection.model_dump(mode="json", exclude_none=True),
        }
        if self.eval is not None:
            out["eval"] = self.eval.model_dump(mode="json", exclude_none=True)
        return out


def filled_params(kind: str, spec) -> dict[str, Any]:
    """`{name, every parameter}` of a selector or scorer block after validation, defaults filled in."""
    if kind == "selector":
        from .selection import get_selector

        params = get_selector(spec.name, **spec.params).params
    else:
        from .scoring import get_scorer

        params = get_scorer(spec.name, **spec.params).params
    return {"name": spec.name, **params.model_dump(mode="json")}


def _resolve(base: Path, value) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _looks_like_local_path(value: str, base: Path) -> bool:
    """Resolve base_model against the recipe folder when it names a local folder (not a hub id)."""
    return value.startswith((".", "/", "~")) or (base / value).exists()


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key written twice in one YAML mapping."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping: plain YAML keeps the last one silently, so a
    second `selection:` block would replace the first and `learning_rate` would take whichever came last."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges are meant to be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise DuplicateKeyError(
                            None, None, f"duplicate key '{key}' (first on line {seen[key]}; YAML would silently keep"
                            " only the last one)", key_node.start_mark
                        )
                    seen[key] = key_node.start_mark.line + 1
                except TypeError:  # an unhashable key: SafeLoader reports it
                    continue
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """Parse YAML safely, refusing duplicate keys at any depth; errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such recipe file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read recipe ({exc})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if isinstance(exc, DuplicateKeyError):
            raise UserError(f"{path}{where}: {problem}") from None
        raise UserError(f"{path}{where}: not valid YAML ({problem})") from None


def _format_validation_error(path: Path, exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    where = ".".join(loc)
    if err["type"] == "extra_forbidden":
        model = _model_at(loc[:-1])
        valid = sorted(model.model_fields) if model else []
        hint = did_you_mean(loc[-1], valid)
        return f"{path}: unknown key '{where}'{hint}; valid keys there: {', '.join(valid)}"
    if err["type"] == "missing":
        return f"{path}: missing required key '{where}'"
    if err["type"] == "value_error":
        return f"{path}: {err['msg'].removeprefix('Value error, ')}"
    return f"{path}: key '{where}': {err['msg']} (got {err.get('input')!r})"


def _model_at(loc: list[str]):
    model: Any = Recipe
    for key in loc:
        field = model.model_fields.get(key)
        if field is None:
            return None
        ann = field.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                model = cand
                break
        else:
            return None
    return model


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file (our block only; see `validate_axolotl` for Axolotl's keys)."""
    path = Path(path).resolve()
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe is a YAML mapping of keys, got {type(raw).__name__}")
    raw = dict(raw)
    base = path.parent
    if "selection" not in raw:
        raise UserError(f"{path}: missing required key 'selection' (our block: pool, selector, seed_size, ...)")
    if "output_dir" not in raw:
        raise UserError(f"{path}: missing required key 'output_dir'")
    selection = raw.pop("selection")
    output_dir = raw.pop("output_dir")
    eval_block = raw.pop("eval", None)
    if eval_block is not None:
        if isinstance(eval_block, dict) and isinstance(eval_block.get("data_dir"), str):
            eval_block = {**eval_block, "data_dir": str(_resolve(base, eval_block["data_dir"]))}
        held = eval_block.get("heldout") if isinstance(eval_block, dict) else None
        if isinstance(held, dict) and isinstance(held.get("file"), str):  # a held-out file, beside the recipe
            eval_block = {**eval_block, "heldout": {**held, "file": str(_resolve(base, held["file"]))}}
        try:
            eval_block = EvalSpec(**eval_block) if isinstance(eval_block, dict) else EvalSpec.model_validate(eval_block)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            hint = did_you_mean(err["loc"][-1], EvalSpec.model_fields) if err["type"] == "extra_forbidden" else ""
            raise UserError(f"{path}: eval.{where}: {err['msg'].removeprefix('Value error, ')}{hint}") from None
    if isinstance(selection, dict) and isinstance(selection.get("pool"), dict) and "path" in selection["pool"]:
        selection["pool"] = {**selection["pool"], "path": _resolve(base, selection["pool"]["path"])}
        files = selection["pool"].get("data_files")
        if files and not Path(selection["pool"]["path"]).is_dir():  # beside a folder they name files inside it
            files = [files] if isinstance(files, str) else files
            selection["pool"]["data_files"] = [str(_resolve(base, f)) if isinstance(f, str) else f for f in files]
    for block in ("selector", "scorer"):
        spec = selection.get(block) if isinstance(selection, dict) else None
        if isinstance(spec, dict):
            selection[block] = {
                k: str(_resolve(base, v)) if k.endswith(("_model", "_path", "_file")) and isinstance(v, str) else v
                for k, v in spec.items()
            }
    if isinstance(raw.get("base_model"), str) and _looks_like_local_path(raw["base_model"], base):
        raw["base_model"] = str(_resolve(base, raw["base_model"]))
    try:
        recipe = Recipe(
            path=path, selection=selection, eval=eval_block, output_dir=_resolve(base, str(output_dir)), axolotl=raw
        )
    except ValidationError as exc:
        raise UserError(_format_validation_error(path, exc)) from None
    check_recipe(recipe)
    check_output_dir(recipe)
    return recipe


def check_recipe(recipe: Recipe) -> None:
    """Checks that need more than types: the selector exists and takes these params, files exist."""
    from .selection import get_selector

    sel = recipe.selection
    try:
        selector = get_selector(sel.selector.name, **sel.selector.params)
    except UserError as exc:
        raise UserError(f"{recipe.path}: selection.selector: {exc}") from None
    if sel.scorer is None and selector.scores == "required" and selector.default_scorer is None:
        raise UserError(f"{recipe.path}: selection.scorer: selector '{selector.name}' needs scores; name a scorer")
    if sel.scorer is not None:
        from .scoring import get_scorer

        try:
            get_scorer(sel.scorer.name, **sel.scorer.params).check_ready(recipe)
        except UserError as exc:
            raise UserError(f"{recipe.path}: selection.scorer: {exc}") from None
        if selector.scores == "none":
            raise UserError(f"{recipe.path}: selection.scorer: selector '{selector.name}' does not use scores; remove the scorer")
    from .pools import pool_sources

    try:
        pool_sources(sel.pool.path, sel.pool.data_files)
    except UserError as exc:
        raise UserError(f"{recipe.path}: selection.pool.path: {exc}") from None
    base_model = recipe.axolotl["base_model"]
    if not Path(str(base_model)).is_absolute():  # not resolved by load_recipe: no such folder next to the recipe
        raise UserError(
            f"{recipe.path}: base_model: no local model folder '{base_model}' (looked in {recipe.path.parent});"
            " models are never downloaded: set base_model to a folder holding config.json and the tokenizer"
            " (for the demo model run `diverse-axolotl prepare-model`)"
        )
    if str(base_model).startswith("/"):
        folder = Path(base_model)
        if not folder.is_dir():
            raise UserError(
                f"{recipe.path}: base_model: no such model folder {base_model}"
                " (for the demo model run `diverse-axolotl prepare-model`)"
            )
        if not (folder / "config.json").is_file():
            raise UserError(f"{recipe.path}: base_model: {folder} has no config.json (not a Hugging Face model folder)")
        tokenizer_dir = Path(recipe.axolotl.get("tokenizer_config") or folder)
        if not any((tokenizer_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            raise UserError(f"{recipe.path}: base_model: {tokenizer_dir} holds no tokenizer (tokenizer.json or tokenizer_config.json)")
    if recipe.axolotl.get("trust_remote_code") not in (None, False) and recipe.axolotl["trust_remote_code"] is not True:
        raise UserError(f"{recipe.path}: trust_remote_code must be true or false")


def check_output_dir(recipe: Recipe) -> None:
    """The run folder can be made and written, and holds none of the run's inputs: `--force` clears a run
    folder, so one that is (or lies above) the recipe, the pool or the model would put them at risk."""
    out = recipe.output_dir
    where = f"{recipe.path}: output_dir {out}"
    if out.exists() and not out.is_dir():
        raise UserError(f"{where} is a file, not a folder")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{where} lies under {existing}, which is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is read-only" if existing == out else f"cannot be created: {existing} is read-only"
        raise UserError(f"{where} {what}")
    inputs = {"the recipe": recipe.path, "the pool": recipe.selection.pool.path}
    if Path(str(recipe.axolotl["base_model"])).is_absolute():
        inputs["the base model"] = Path(str(recipe.axolotl["base_model"]))
    if recipe.selection.embedding.cache_dir is not None:
        inputs["the embedding cache"] = recipe.selection.embedding.cache_dir
    for name, path in inputs.items():
        if Path(path).resolve().is_relative_to(out):
            raise UserError(
                f"{where} holds {name} ({path}); a run folder must hold only what the run writes, since"
                " --force clears it: name a folder of its own (for example output_dir: run)"
            )
