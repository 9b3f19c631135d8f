"""The recipe: one YAML file holding Axolotl's own keys plus our `selection` block.

Axolotl's keys (base_model, adapter, lora_r, sequence_len, ...) are passed through untouched and validated by
Axolotl itself (`validate_axolotl`, which imports Axolotl and is therefore slow). Our block is validated here with
pydantic, unknown keys rejected with a did-you-mean. Relative paths resolve against the recipe file's folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from .errors import UserError, _model_at, did_you_mean
from .evaluation.spec import EvalSpec
from .hashing import HASH_NEUTRAL, without_neutral_defaults
from .recipe_checks import check_output_dir, check_recipe
from .recipe_yaml import read_yaml

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
    path: LaxPath = Field(
        description="JSON list, JSONL (optionally .gz/.xz) or parquet file of rows; a folder (its"
        " data files, or a save_to_disk dataset); or a glob such as data/*.jsonl"
    )
    format: Literal["alpaca", "chat", "sharegpt", "completion"] = Field(
        "alpaca",
        description="alpaca: instruction/input/output; chat: messages; sharegpt: conversations of"
        " {from, value}; completion: text",
    )
    type: str | None = Field(
        None, description="Axolotl's dataset type (alpaca, chat_template, completion); sets format"
    )
    data_files: str | list[str] | None = Field(None, description="as in Axolotl: files (or globs) inside path")
    split: str | None = Field(None, description="the split of a save_to_disk DatasetDict (default: train)")
    ds_type: str | None = Field(
        None, description="accepted as in Axolotl; the files' suffixes decide how they are read"
    )
    field_messages: str | None = Field(None, description="chat_template: messages (chat) or conversations (sharegpt)")
    message_property_mappings: dict[str, str] | None = Field(
        None, description="chat_template: {role: from, content: value} for sharegpt"
    )
    limit: int | None = Field(None, gt=0, description="use only the first N rows of the file")
    empty_rows: Literal["skip", "fail"] = Field("skip", description="rows with an empty instruction or answer")
    dedup: bool = Field(False, description="drop exact duplicate rows (they are always counted)")

    @model_validator(mode="after")
    def _format_from_axolotl_type(self):
        """An Axolotl-style entry (`type`, `field_messages`, ...) decides the format; a contradicting `format` is
        refused."""
        if self.type is None:
            return self
        from .pools import format_from_axolotl

        try:
            fmt = format_from_axolotl(self.type, self.field_messages, self.message_property_mappings)
        except UserError as exc:
            raise ValueError(f"selection.pool: {exc}") from None
        if "format" in self.model_fields_set and self.format != fmt:
            raise ValueError(
                f"selection.pool: format {self.format} contradicts type {self.type} (which reads as {fmt}); keep one"
            )
        self.format = fmt
        return self


class ComponentSpec(BaseModel):
    """A selector or scorer block, `{name: kcenter, <param>: <value>, ...}`: the parameters sit beside the name.

    Resolved once, when the recipe loads (`SelectionSpec`'s validators): the class is looked up in its registry
    and the parameters validated into its `Params` model. That model is what the loop builds the selector or
    scorer from (`build`), what the recipe hash covers and what run.json records (`filled`)."""

    model_config = ConfigDict(extra="allow")
    name: str
    _component: Any = PrivateAttr(None)
    _validated: BaseModel | None = PrivateAttr(None)

    @property
    def params(self) -> dict[str, Any]:
        """The parameters as written in the recipe."""
        return dict(self.model_extra or {})

    def resolve(self, kind: str) -> ComponentSpec:
        """Look the class up ("selector" or "scorer") and validate the parameters; UserError when either fails."""
        cls: Any
        if kind == "selector":
            from .selection import selector_class

            cls = selector_class(self.name)
        else:
            from .scoring import SCORERS

            cls = SCORERS.get(self.name)
        from .selection.base import parse_params

        label = self.name if kind == "selector" else f"scorer {self.name}"
        self._component, self._validated = cls, parse_params(label, cls.Params, self.params)
        return self

    @property
    def component(self) -> Any:
        """The selector or scorer class the name stands for."""
        if self._component is None:
            raise RuntimeError(f"'{self.name}' was never resolved (recipes resolve their blocks when they load)")
        return self._component

    @property
    def validated(self) -> BaseModel:
        self.component  # noqa: B018  (resolved, or a clear error)
        assert self._validated is not None
        return self._validated

    def build(self) -> Any:
        """A fresh selector or scorer from the validated parameters (each run gets its own: they hold last_info)."""
        from_params = getattr(self.component, "from_params", None)
        if from_params is not None:
            return from_params(self.validated)
        return self.component(**self.validated.model_dump())

    def filled(self) -> dict[str, Any]:
        """`{name, every parameter}` with defaults filled in: writing a default out is the same run."""
        return {"name": self.name, **self.validated.model_dump(mode="json")}

    def hashed(self) -> dict[str, Any]:
        """`filled()` minus the parameters added later that hold their default (`hashing.HASH_NEUTRAL`)."""
        return without_neutral_defaults(self.validated, self.filled())


#: Earlier names of ComponentSpec (the two blocks were identical classes).
SelectorSpec = ScorerSpec = ComponentSpec


class EmbeddingSpec(Strict):
    pooling: Literal["mean", "last"] = Field("mean", description="mean over non-pad tokens, or the last token")
    layer: int = Field(-1, description="hidden-state layer to pool (-1: the last)")
    max_length: int = Field(512, gt=0, description="tokens per row; longer rows are cut from the right")
    batch_tokens: int = Field(16384, gt=0, description="padded tokens per batch (rows are sorted by length)")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="auto: bfloat16 on a GPU and on a CPU with native bf16 measured faster than float32, else float32",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cache: bool = Field(
        True, description="reuse embeddings and per-row scores of the same pool, model, adapter, settings across runs"
    )
    cache_dir: LaxPath | None = Field(None, description="default: $DIVERSE_AXOLOTL_CACHE or ~/.cache/diverse-axolotl")
    text: Literal["prompt_response", "prompt"] = Field(
        "prompt_response",
        description="what of each row is embedded: prompt and answer as the model reads them, or the prompt only",
        json_schema_extra=HASH_NEUTRAL,
    )
    shared_fs: bool = Field(
        True,
        description="under torchrun, ranks write their rows into one file by offset; false: rows are gathered to rank"
        " 0, which writes the file (ranks whose filesystem cannot take concurrent writes)",
        json_schema_extra=HASH_NEUTRAL,
    )

    def with_text_of(self, selector) -> EmbeddingSpec:
        """These settings, with `text` the selector's own (`Selector.embedding_text`) where they leave it out."""
        if "text" in self.model_fields_set:
            return self
        return self.model_copy(update={"text": selector.embedding_text})


class SelectionSpec(Strict):
    pool: PoolSpec
    selector: ComponentSpec
    scorer: ComponentSpec | None = None
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

    @field_validator("selector", "scorer")
    @classmethod
    def _resolve(cls, spec, info):
        """Every problem of the block on its own line, each naming the block."""
        if spec is None:
            return spec
        try:
            return spec.resolve(info.field_name)
        except UserError as exc:
            raise ValueError(
                "\n".join(f"selection.{info.field_name}: {line}" for line in str(exc).splitlines())
            ) from None

    @model_validator(mode="after")
    def _selector_embedding_text(self):
        """`embedding.text` left out: the selector's own (`Selector.embedding_text`; k-center embeds the prompt)."""
        self.embedding = self.embedding.with_text_of(self.selector.component)
        return self

    @property
    def total_rows(self) -> int:
        return self.seed_size + self.rounds * self.per_round


class Recipe(BaseModel):
    """A loaded recipe: our block validated, Axolotl's keys kept as written (paths resolved)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, ignored_types=(functools.cached_property,))
    path: Path
    selection: SelectionSpec
    eval: EvalSpec | None = None  # validated in load_recipe, where its errors get their own wording
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
        if self.axolotl.get("trust_remote_code") not in (None, False, True):
            raise ValueError("trust_remote_code must be true or false")
        return self

    # The Axolotl keys our own code needs before Axolotl has normalised the config (loading the tokenizer and the
    # round's model, checking the folders): read here only. What Axolotl decides (sequence_len and its defaults)
    # comes from Axolotl's normalised config of each round (`training.train_round`).
    @property
    def base_model(self) -> str:
        return str(self.axolotl["base_model"])

    @property
    def trust_remote_code(self) -> bool:
        return self.axolotl.get("trust_remote_code") is True

    @property
    def tokenizer_dir(self) -> Path:
        return Path(self.axolotl.get("tokenizer_config") or self.base_model)

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
        selection["selector"] = self.selection.selector.hashed()
        if self.selection.scorer is not None:
            selection["scorer"] = self.selection.scorer.hashed()
        selection["embedding"] = without_neutral_defaults(self.selection.embedding, selection["embedding"])
        for key in ("cache", "cache_dir", "shared_fs"):  # where and how embeddings are stored changes no result
            selection["embedding"].pop(key, None)
        payload = {"selection": selection, "axolotl": self.axolotl}
        if self.eval is not None:
            payload["eval"] = self.eval.model_dump(mode="json", exclude={"cache"})  # reusing a result changes none
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def resolved(self) -> dict[str, Any]:
        """The recipe as the run sees it, with absolute paths and the selector's and scorer's every parameter
        (defaults filled in, as hashed): printed by `validate`, saved in the run folder."""
        selection = self.selection.model_dump(mode="json", exclude_none=True)
        selection["selector"] = self.selection.selector.filled()
        if self.selection.scorer is not None:
            selection["scorer"] = self.selection.scorer.filled()
        out = {**self.axolotl, "output_dir": str(self.output_dir), "selection": selection}
        if self.eval is not None:
            out["eval"] = self.eval.model_dump(mode="json", exclude_none=True)
        return out


def _resolve(base: Path, value) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _looks_like_local_path(value: str, base: Path) -> bool:
    """Resolve base_model against the recipe folder when it names a local folder (not a hub id)."""
    return value.startswith((".", "/", "~")) or (base / value).exists()


def _format_validation_error(path: Path, exc: ValidationError) -> str:
    """Every problem of the recipe at once, one line each, naming the file and the key."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        where = ".".join(loc)
        if err["type"] == "extra_forbidden":
            model = _model_at(Recipe, loc[:-1])
            valid = sorted(model.model_fields) if model else []
            hint = did_you_mean(loc[-1], valid)
            lines.append(f"{path}: unknown key '{where}'{hint}; valid keys there: {', '.join(valid)}")
        elif err["type"] == "missing":
            lines.append(f"{path}: missing required key '{where}'")
        elif err["type"] == "value_error":
            lines += [f"{path}: {line}" for line in err["msg"].removeprefix("Value error, ").splitlines()]
        else:
            lines.append(f"{path}: key '{where}': {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


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
            lines = []
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"])
                unknown = err["type"] == "extra_forbidden"
                hint = did_you_mean(str(err["loc"][-1]), EvalSpec.model_fields) if unknown else ""
                lines.append(f"{path}: eval.{where}: {err['msg'].removeprefix('Value error, ')}{hint}")
            raise UserError("\n".join(lines)) from None
    if isinstance(selection, dict) and isinstance(selection.get("pool"), dict) and "path" in selection["pool"]:
        selection["pool"] = {**selection["pool"], "path": _resolve(base, selection["pool"]["path"])}
        files = selection["pool"].get("data_files")
        if files and not Path(selection["pool"]["path"]).is_dir():  # beside a folder they name files inside it
            files = [files] if isinstance(files, str) else files
            selection["pool"]["data_files"] = [str(_resolve(base, f)) if isinstance(f, str) else f for f in files]
    embedding = selection.get("embedding") if isinstance(selection, dict) else None
    if isinstance(embedding, dict) and isinstance(embedding.get("cache_dir"), str):  # `~` and beside the recipe
        selection["embedding"] = {**embedding, "cache_dir": _resolve(base, embedding["cache_dir"])}
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
