"""The params contract: defaults load, and every kind of bad value stops with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from naturalist.params import NATURE_12K_URL, Params, ParamsError, load_params, parse_params

REPO = Path(__file__).resolve().parents[1]


def error_for(raw: dict) -> str:
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_committed_params_file_is_valid_and_matches_the_defaults() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.data.source == "synthetic"
    assert params.data.url == NATURE_12K_URL
    assert params.model.activation == "ReLU"
    # the file documents every default: the defaults in code and in params.yaml agree
    assert params.model_dump() == Params().model_dump()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"model": {"activation": "Swish"}},
            "model.activation: 'Swish' is not one of ReLU, GELU, SiLU, Mish",
        ),
        (
            {"model": {"kernel_sizes": [3, 3, 3, 3]}},
            "model.kernel_sizes: [3, 3, 3, 3] must be a list of exactly 5 values",
        ),
        ({"model": {"dropout": 1.5}}, "model.dropout: 1.5 must be < 1.0"),
        ({"model": {"filters": [32, 32, 32, 32, 0]}}, "model.filters[4]: 0 must be > 0"),
        ({"model": {"batch_norm": "yes"}}, "model.batch_norm: 'yes' must be true or false"),
        ({"train": {"epochs": 0}}, "train.epochs: 0 must be > 0"),
        ({"train": {"lr": "1e-3"}}, "train.lr: '1e-3' must be a number"),
        (
            {"data": {"source": "imagenet"}},
            "data.source: 'imagenet' is not one of synthetic, inaturalist",
        ),
        ({"data": {"sha256": "abc"}}, "data.sha256: 'abc' must be 64 lowercase hex characters"),
        ({"data": {"image_size": 16}}, "data.image_size: 16 must be >= 32"),
        ({"wandb": {"mode": "cloud"}}, "wandb.mode: 'cloud' is not one of offline, online"),
        (
            {"data": {"synthetic": {"min_side": 300, "max_side": 100}}},
            "data.synthetic.min_side (300) must not exceed data.synthetic.max_side (100)",
        ),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(raw: dict, expected: str) -> None:
    assert expected in error_for(raw)


def test_unknown_keys_are_errors_with_a_suggestion() -> None:
    assert error_for({"model": {"activaton": "GELU"}}) == (
        "params.yaml: unknown key 'model.activaton' (did you mean 'activation'?)"
    )
    assert error_for({"modle": {}}) == "params.yaml: unknown key 'modle' (did you mean 'model'?)"
    assert "unknown key 'zzz'" in error_for({"zzz": 1})


def test_file_problems_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "missing.yaml")
    broken = tmp_path / "params.yaml"
    broken.write_text("model:\n  activation: [ReLU\n")
    with pytest.raises(ParamsError, match="not valid YAML at line"):
        load_params(broken)
    broken.write_text("- a list\n")
    with pytest.raises(ParamsError, match="top level must be a mapping"):
        load_params(broken)


def test_partial_sections_fill_in_defaults(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"model": {"activation": "GELU"}}))
    params = load_params(path)
    assert params.model.activation == "GELU"
    assert params.model.filters == [32] * 5
