"""The params contract: one typed, validated view of ``params.yaml`` that every stage loads.

Validation runs before any work. A bad value stops the stage with a single line that names the
key, the value and what is allowed; an unknown key (a typo) is an error too.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from naturalist.errors import PipelineError

# An Optuna storage URL from the environment; overrides sweep.storage and may hold a password.
STORAGE_ENV = "NATURALIST_SWEEP_STORAGE"
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


FreezePercent = Annotated[int, Field(ge=0, le=100)]


class FinetuneParams(_Section):
    """An ImageNet backbone fine-tuned once per freeze level (stages finetune@<level>)."""

    backbone: Literal["efficientnet_lite0", "resnet50"] = "efficientnet_lite0"
    weights: Literal["IMAGENET1K_V1", "IMAGENET1K_V2"] = "IMAGENET1K_V2"
    freeze: list[FreezePercent] = [70, 80, 90]
    image_size: Annotated[int, Field(ge=32, le=1024)] = 96
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2
    epochs: PositiveInt = 3
    batch_size: PositiveInt = 32
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Annotated[float, Field(gt=0.0)] = 1e-3
    head_lr: Annotated[float, Field(gt=0.0)] = 3e-3
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    schedule: Literal["none", "cosine", "onecycle"] = "cosine"
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    augment: bool = False
    early_stopping: Annotated[int, Field(ge=0)] = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"

    @field_validator("freeze")
    @classmethod
    def _levels_unique(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("is empty: list at least one level, e.g. [70, 80, 90]")
        repeated = sorted({level for level in value if value.count(level) > 1})
        if repeated:
            raise ValueError(
                f"lists a level more than once ({', '.join(map(str, repeated))}): "
                "each level is one stage, finetune@<level>"
            )
        return value


class EvaluateParams(_Section):
    """Test-set evaluation of every model in models/ (stage evaluate_test)."""

    batch_size: PositiveInt = 256
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    grid_per_class: Annotated[int, Field(ge=1, le=10)] = 3


class WandbParams(_Section):
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "inaturalist-cnn"
    entity: str | None = None


# --------------------------------------------------------------------------------------------
# sweep: a W&B sweep config (method, metric, parameters, run_cap, early_terminate) whose parameter
# names are dotted model.* / train.* keys applied over the base params.

SWEEP_SECTIONS = ("model", "train")
FLOAT_DISTRIBUTIONS = ("uniform", "q_uniform", "log_uniform_values", "log_uniform")
SWEEP_DISTRIBUTIONS = ("categorical", "constant", "int_uniform", *FLOAT_DISTRIBUTIONS)
# W&B distributions without an Optuna counterpart: rejected with a message that says so.
WANDB_ONLY_DISTRIBUTIONS = (
    "normal",
    "q_normal",
    "log_normal",
    "q_log_normal",
    "q_log_uniform",
    "q_log_uniform_values",
    "inv_log_uniform",
    "inv_log_uniform_values",
    "beta",
    "q_beta",
)
Number = int | float


class SweepParameter(_Section):
    """One swept key, W&B style: ``values`` (or one ``value``), or ``min``/``max`` (+ ``q``)."""

    values: list[Any] | None = None
    value: Any = None
    distribution: str | None = None
    min: Number | None = None
    max: Number | None = None
    q: Annotated[Number, Field(gt=0)] | None = None

    @property
    def kind(self) -> str:
        """The distribution, given or inferred the way W&B infers it."""
        if self.distribution is not None:
            return self.distribution
        if self.values is not None:
            return "categorical"
        if self.value is not None:  # no model.* or train.* key takes null
            return "constant"
        if self.q is not None:
            return "q_uniform"
        if isinstance(self.min, int) and isinstance(self.max, int):
            return "int_uniform"
        return "uniform"

    @property
    def step(self) -> Number:
        """The q of q_uniform (W&B's default is 1)."""
        return self.q if self.q is not None else 1

    @property
    def draws_ints(self) -> bool:
        """int_uniform, and q_uniform with integer min, max and q, draw integers."""
        if self.kind == "q_uniform":
            return all(isinstance(v, int) for v in (self.min, self.max, self.step))
        return self.kind == "int_uniform"

    @property
    def choices(self) -> list[Any]:
        """The discrete values (categorical and constant)."""
        return list(self.values) if self.values is not None else [self.value]

    def problem(self) -> str | None:
        """What is wrong with this parameter's own fields (None when it is well formed)."""
        kind = self.kind
        ranged = self.min is not None or self.max is not None or self.q is not None
        discrete = self.values is not None or self.value is not None
        if kind in WANDB_ONLY_DISTRIBUTIONS:
            return (
                f"distribution {kind!r} has no Optuna counterpart; "
                f"use one of {', '.join(SWEEP_DISTRIBUTIONS)}"
            )
        if kind not in SWEEP_DISTRIBUTIONS:
            return f"distribution {kind!r} is not one of {', '.join(SWEEP_DISTRIBUTIONS)}"
        if kind == "categorical":
            if self.values is None or ranged or self.value is not None:
                return "categorical takes only values (a non-empty list)"
            if not self.values:
                return "values is empty: list at least one value"
            keys = [repr(v) for v in self.values]
            if len(set(keys)) < len(keys):
                return f"values lists a value more than once: {self.values!r}"
            return None
        if kind == "constant":
            if self.value is None or ranged or self.values is not None:
                return "constant takes only value"
            return None
        if discrete:
            return f"{kind} takes min and max, not values (give one or the other)"
        if self.min is None or self.max is None:
            return f"{kind} needs both min and max"
        if self.q is not None and kind != "q_uniform":
            return f"q only goes with distribution q_uniform, not {kind}"
        if not self.min < self.max:
            return f"min ({self.min}) must be below max ({self.max})"
        if kind == "int_uniform" and not (isinstance(self.min, int) and isinstance(self.max, int)):
            return f"int_uniform needs integer min and max, got {self.min} and {self.max}"
        if kind == "log_uniform_values" and self.min <= 0:
            return f"log_uniform_values needs min > 0, got {self.min}"
        if kind == "q_uniform":
            steps = (self.max - self.min) / self.step
            if abs(steps - round(steps)) > 1e-9:
                return f"max - min ({self.max} - {self.min}) must be a multiple of q ({self.step})"
        return None

    def candidates(self) -> list[tuple[str, Any]]:
        """(label, value) to check against the swept key: each choice, or the range's ends."""
        if self.kind in ("categorical", "constant"):
            return [("", value) for value in self.choices]
        assert self.min is not None and self.max is not None
        ends: list[Any] = [self.min, self.max]
        if self.draws_ints:
            ends = [int(v) for v in ends]
        elif self.kind == "log_uniform":  # W&B: min and max are natural-log exponents
            ends = [math.exp(v) for v in ends]
        else:
            ends = [float(v) for v in ends]
        return list(zip(("min ", "max "), ends, strict=True))

    @field_validator("min", "max", "q", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError("must be a number")
        return value


class SweepMetric(_Section):
    name: str = "val/acc"
    goal: str = "maximize"


class SweepEarlyTerminate(_Section):
    type: Literal["hyperband"] = "hyperband"
    min_iter: PositiveInt = 4
    eta: Annotated[int, Field(ge=2)] = 5


def _original_space() -> dict[str, SweepParameter]:
    """The search space of the original project's W&B sweep."""
    space: dict[str, list[Any]] = {
        "model.kernel_sizes": [[3, 3, 3, 3, 3], [3, 5, 5, 7, 7], [7, 7, 5, 5, 3]],
        "model.dropout": [0.2, 0.3],
        "model.activation": ["ReLU", "GELU", "SiLU", "Mish"],
        "model.batch_norm": [True, False],
        "model.filters": [[32, 32, 32, 32, 32], [128, 128, 64, 64, 32], [32, 64, 128, 256, 512]],
        "model.augment": [False],
        "model.dense_units": [128, 256],
    }
    return {name: SweepParameter(values=values) for name, values in space.items()}


def sweepable_keys() -> list[str]:
    """Every dotted key a sweep may vary: the fields of model.* and train.*."""
    sections = {"model": ModelParams, "train": TrainParams}
    return [f"{s}.{field}" for s in SWEEP_SECTIONS for field in sections[s].model_fields]


class SweepParams(_Section):
    """The hyperparameter sweep over the scratch CNN, in W&B's sweep-config format."""

    engine: Literal["optuna", "wandb"] = "optuna"
    storage: str | None = None
    heartbeat_interval: PositiveInt = 60
    grace_period: PositiveInt = 180
    method: Literal["grid", "random", "bayes"] = "random"
    metric: SweepMetric = SweepMetric()
    run_cap: PositiveInt | None = 6
    early_terminate: SweepEarlyTerminate | None = SweepEarlyTerminate()
    parameters: dict[str, SweepParameter] = Field(default_factory=_original_space)

    @model_validator(mode="before")
    @classmethod
    def _hyperband_form(cls, data: Any) -> Any:
        early = data.get("early_terminate") if isinstance(data, dict) else None
        if isinstance(early, dict) and {"max_iter", "s"} & set(early):
            raise ValueError(
                "sweep.early_terminate: give min_iter and eta; max_iter and s are not supported "
                "(the most epochs a trial trains is train.epochs)"
            )
        return data

    @model_validator(mode="after")
    def _well_formed(self) -> SweepParams:
        if self.metric.name != "val/acc":
            raise ValueError(
                f"sweep.metric.name: {self.metric.name!r} is not supported: trials are ranked "
                "by val/acc, the metric each trial's checkpoint is chosen by"
            )
        if self.metric.goal != "maximize":
            raise ValueError(
                f"sweep.metric.goal: {self.metric.goal!r} must be maximize for val/acc"
            )
        if not self.parameters:
            raise ValueError("sweep.parameters: is empty: give at least one model.* or train.* key")
        known = sweepable_keys()
        for name, parameter in self.parameters.items():
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(
                    f"sweep.parameters: {name!r} is not a model.* or train.* key{hint}"
                )
            problem = parameter.problem()
            if problem:
                raise ValueError(f"sweep.parameters.{name}: {problem}")
            if self.method == "grid" and parameter.kind not in ("categorical", "constant"):
                raise ValueError(
                    f"sweep.parameters.{name}: method grid needs a list of values "
                    f"(min/max ranges are for random and bayes)"
                )
        if self.run_cap is None and self.method != "grid":
            raise ValueError(
                f"sweep.run_cap: null runs the whole grid, so it needs method grid "
                f"({self.method} needs a number of trials)"
            )
        if self.storage is not None and "://" not in self.storage:
            raise ValueError(
                f"sweep.storage: {self.storage!r} is not a storage URL "
                "(e.g. sqlite:///.sweep/optuna.db); null = the local default"
            )
        if self.storage is not None and urlsplit(self.storage).password is not None:
            shown = re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", self.storage)
            raise ValueError(
                f"sweep.storage: {shown!r} holds a password, and params.yaml is committed: "
                "remove it from the URL and export PGPASSWORD (or use ~/.pgpass, or put the "
                f"whole URL in {STORAGE_ENV})"
            )
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(
                f"sweep.grace_period: {self.grace_period} must be longer than "
                f"sweep.heartbeat_interval ({self.heartbeat_interval})"
            )
        return self


def check_sweep_fits(params: Params) -> None:
    """Cross-section checks: every swept value is valid for its key; hyperband fits the epochs."""
    sweep = params.sweep
    sections: dict[str, BaseModel] = {"model": params.model, "train": params.train}
    for name, parameter in sweep.parameters.items():
        section, field = name.split(".", 1)
        base = sections[section]
        for label, value in parameter.candidates():
            try:
                type(base).model_validate({**base.model_dump(), field: value})
            except ValidationError as error:
                first = error.errors()[0]
                if parameter.kind in FLOAT_DISTRIBUTIONS and first["type"] == "int_type":
                    raise ValueError(
                        f"sweep.parameters.{name}: distribution {parameter.kind} draws numbers "
                        f"with decimals but {name} takes integers (use int_uniform, or "
                        "q_uniform with integer min, max and q)"
                    ) from None
                raise ValueError(
                    f"sweep.parameters.{name}: {label}{value!r} {_allowed(first)}"
                ) from None
    if sweep.early_terminate is not None and "train.epochs" in sweep.parameters:
        raise ValueError(
            "sweep.parameters: train.epochs cannot be swept with early_terminate "
            "(hyperband needs one fixed number of epochs; set early_terminate: null)"
        )
    if sweep.engine == "wandb" and params.wandb.mode != "online":
        raise ValueError(
            f"sweep.engine: 'wandb' needs wandb.mode: online and a W&B login (wandb.mode is "
            f"{params.wandb.mode!r}); use sweep.engine: optuna to sweep offline"
        )


class Params(_Section):
    seed: Annotated[int, Field(ge=0)] = 42
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluate: EvaluateParams = EvaluateParams()
    wandb: WandbParams = WandbParams()
    sweep: SweepParams = SweepParams()

    @model_validator(mode="after")
    def _sweep_fits(self) -> Params:
        check_sweep_fits(self)
        return self


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
