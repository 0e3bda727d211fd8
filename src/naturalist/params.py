"""The params contract: one typed, validated view of ``params.yaml`` that every stage loads.

Validation runs before any work. A bad value stops the stage with a single line that names the
key, the value and what is allowed; an unknown key (a typo) is an error too.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from naturalist.errors import PipelineError

NATURE_12K_URL = "https://storage.googleapis.com/wandb_datasets/nature_12K.zip"
NATURE_12K_BYTES = 3_816_687_935

Activation = Literal["ReLU", "GELU", "SiLU", "Mish"]
PositiveInt = Annotated[int, Field(gt=0)]


class ParamsError(PipelineError):
    """A params.yaml problem, already phrased as the one line the user should see."""

    exit_code = 2


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SyntheticParams(_Section):
    train_per_class: PositiveInt = 100
    test_per_class: PositiveInt = 20
    min_side: Annotated[int, Field(ge=32)] = 96
    max_side: Annotated[int, Field(ge=32)] = 320


class DataParams(_Section):
    source: Literal["synthetic", "inaturalist"] = "synthetic"
    url: str = NATURE_12K_URL
    expected_bytes: PositiveInt | None = NATURE_12K_BYTES
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    image_size: Annotated[int, Field(ge=32, le=1024)] = 64
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    synthetic: SyntheticParams = SyntheticParams()

    @model_validator(mode="after")
    def _sides_ordered(self) -> DataParams:
        if self.synthetic.min_side > self.synthetic.max_side:
            raise ValueError(
                f"data.synthetic.min_side ({self.synthetic.min_side}) must not "
                f"exceed data.synthetic.max_side ({self.synthetic.max_side})"
            )
        return self

    @field_validator("url")
    @classmethod
    def _url_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(
                "is empty: give an http(s) URL, a local .zip file or an extracted folder"
            )
        return value


class ModelParams(_Section):
    filters: Annotated[list[PositiveInt], Field(min_length=5, max_length=5)] = [32] * 5
    kernel_sizes: Annotated[
        list[Annotated[int, Field(ge=1, le=15)]], Field(min_length=5, max_length=5)
    ] = [3] * 5
    activation: Activation = "ReLU"
    batch_norm: bool = True
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2
    dense_units: PositiveInt = 128
    augment: bool = False


class TrainParams(_Section):
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 64
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Annotated[float, Field(gt=0.0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    schedule: Literal["none", "cosine", "onecycle"] = "cosine"
    early_stopping: Annotated[int, Field(ge=0)] = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"


class WandbParams(_Section):
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "inaturalist-cnn"
    entity: str | None = None


class Params(_Section):
    seed: Annotated[int, Field(ge=0)] = 42
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    wandb: WandbParams = WandbParams()


_TYPE_NAMES = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
}


def _allowed(error: dict[str, Any]) -> str:
    """Phrase what a field accepts, from pydantic's error context."""
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "literal_error":
        return "is not one of " + ctx["expected"].replace("'", "").replace(" or ", ", ")
    if kind == "extra_forbidden":
        return "is not a known key"
    if kind == "missing":
        return "is required"
    if kind in ("too_short", "too_long"):
        return f"must be a list of exactly {ctx.get('min_length', ctx.get('max_length'))} values"
    bounds = {
        "greater_than": "> {gt}",
        "greater_than_equal": ">= {ge}",
        "less_than": "< {lt}",
        "less_than_equal": "<= {le}",
    }
    if kind in bounds:
        return "must be " + bounds[kind].format(**ctx)
    if kind in _TYPE_NAMES:
        hint = ""
        if kind.startswith("float") and isinstance(error.get("input"), str):
            hint = " (YAML reads 1e-3 as text: write 0.001 or 1.0e-3)"
        return f"must be {_TYPE_NAMES[kind]}{hint}"
    if kind == "value_error":
        return error["msg"].removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":
        return "must be 64 lowercase hex characters (a sha256 digest) or null"
    return error["msg"][0].lower() + error["msg"][1:]


def _key_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1] = f"{parts[-1]}[{item}]"
        elif item not in ("int", "float", "str", "bool", "list[...]", "none") and "[" not in item:
            parts.append(str(item))
    return ".".join(parts)


def _suggestion(key_path: str) -> str:
    *section, name = key_path.split(".")
    model: type[BaseModel] = Params
    for part in section:
        field = model.model_fields.get(part.split("[")[0])
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    close = difflib.get_close_matches(name, model.model_fields, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def format_error(error: ValidationError) -> str:
    """The first validation problem as one line: key, value, what is allowed."""
    first = error.errors()[0]
    if first["type"] == "value_error" and not first["loc"][1:]:
        return "params.yaml: " + first["msg"].removeprefix("Value error, ")
    key = _key_path(first["loc"])
    if first["type"] == "extra_forbidden":
        return f"params.yaml: unknown key '{key}'{_suggestion(key)}"
    value = first.get("input")
    shown = "missing" if first["type"] == "missing" else repr(value)
    return f"params.yaml: {key}: {shown} {_allowed(first)}"


def parse_params(raw: dict[str, Any] | None) -> Params:
    """Validate a params mapping; raise ParamsError with one readable line."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml: the top level must be a mapping of sections")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(format_error(error)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}") from None
    return parse_params(raw)
