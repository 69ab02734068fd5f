"""The model section's validation and the YAML loader with its dotted overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from transformer.config import (
    Config,
    ConfigError,
    CorpusConfig,
    DataConfig,
    ModelConfig,
    load_config,
    save_config,
)
from transformer.errors import UserError

# ---------------------------------------------------------------- model section validation


def test_default_model_config_is_the_papers_base_model() -> None:
    config = ModelConfig()
    assert (config.d_model, config.num_heads, config.d_ff) == (512, 8, 2048)
    assert (config.num_encoder_layers, config.num_decoder_layers) == (6, 6)
    assert config.d_k == 64
    assert config.dropout == 0.1


def test_d_model_not_divisible_by_num_heads_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="must be divisible by num_heads") as info:
        ModelConfig(d_model=30, num_heads=4)
    assert info.value.key == "d_model"


@pytest.mark.parametrize(
    "field",
    [
        "d_model",
        "num_heads",
        "d_ff",
        "num_encoder_layers",
        "num_decoder_layers",
        "max_positions",
        "src_vocab_size",
        "tgt_vocab_size",
    ],
)
@pytest.mark.parametrize("value", [0, -4])
def test_non_positive_sizes_are_config_errors_naming_the_field(field: str, value: int) -> None:
    with pytest.raises(ConfigError, match="must be > 0") as info:
        ModelConfig(**{field: value})
    assert info.value.key == field
    assert str(info.value).startswith(f"{field}:")


@pytest.mark.parametrize(
    ("field", "allowed"),
    [
        ("activation", "relu, gelu"),
        ("norm_position", "post, pre"),
        ("positional_encoding", "sinusoidal, learned"),
    ],
)
def test_unknown_choices_are_config_errors_naming_the_allowed_values(
    field: str, allowed: str
) -> None:
    with pytest.raises(ConfigError, match=f"must be one of {allowed}") as info:
        ModelConfig(**{field: "swish"})
    assert info.value.key == field
    assert "'swish'" in str(info.value)


@pytest.mark.parametrize("field", ["dropout", "attention_dropout"])
@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_dropout_out_of_range_is_a_config_error(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=r"must be in \[0, 1\)") as info:
        ModelConfig(**{field: value})
    assert info.value.key == field


def test_shared_embeddings_need_one_vocabulary_size() -> None:
    with pytest.raises(ConfigError, match="src_vocab_size == tgt_vocab_size") as info:
        ModelConfig(src_vocab_size=100, tgt_vocab_size=120, share_embeddings=True)
    assert info.value.key == "share_embeddings"
    ModelConfig(src_vocab_size=100, tgt_vocab_size=120, share_embeddings=False)


def test_config_errors_are_user_errors_and_value_errors() -> None:
    with pytest.raises(UserError):
        ModelConfig(d_model=-1)
    with pytest.raises(ValueError):
        ModelConfig(d_model=-1)


# ------------------------------------------------------------------------------ the loader


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


EXAMPLE = """\
model:
  d_model: 256  # the width of every layer
  num_heads: 4
  d_ff: 1024
  dropout: 0.2
  norm_position: pre
training:
  lr: 0.0007
  optimizer_betas: [0.9, 0.997]
data:
  train:
    src_path: train.de
    tgt_path: train.en
"""


def test_yaml_becomes_nested_typed_dataclasses(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE))
    assert isinstance(config, Config)
    assert isinstance(config.model, ModelConfig)
    assert (config.model.d_model, config.model.num_heads, config.model.d_ff) == (256, 4, 1024)
    assert config.model.norm_position == "pre"
    assert config.model.num_encoder_layers == 6  # untouched keys keep their defaults
    assert config.training.lr == pytest.approx(7e-4)
    assert config.training.optimizer_betas == [0.9, 0.997]
    assert isinstance(config.data.train, CorpusConfig)
    assert config.data.train.src_path == "train.de"
    assert config.data.valid is None


def test_integers_are_accepted_where_a_number_is_expected(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "model:\n  dropout: 0\ntraining:\n  lr: 1\n"))
    assert isinstance(config.model.dropout, float) and config.model.dropout == 0.0
    assert isinstance(config.training.lr, float)


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == Config()


def test_unknown_key_suggests_the_dotted_key_and_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  d_modle: 256\n", name="typo.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "typo.yaml" in message
    assert "model.d_modle" in message
    assert "did you mean 'd_model'" in message
    assert info.value.key == "model.d_modle"


def test_unknown_section_suggests_the_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"modle: unknown key; did you mean 'model'"):
        load_config(write(tmp_path, "modle:\n  d_model: 256\n"))


def test_unknown_key_without_a_close_match_lists_the_known_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="known keys: .*d_model"):
        load_config(write(tmp_path, "model:\n  zzz: 1\n"))


def test_nested_unknown_key_has_the_full_dotted_name(tmp_path: Path) -> None:
    text = "data:\n  train:\n    src_path: a\n    tgt_path: b\n    splt: dev\n"
    with pytest.raises(ConfigError, match=r"data\.train\.splt: unknown key; did you mean 'split'"):
        load_config(write(tmp_path, text))


def test_invalid_value_inside_an_optional_section_names_its_dotted_key(tmp_path: Path) -> None:
    text = "data:\n  valid:\n    format: csv\n    path: dev.csv\n"
    with pytest.raises(ConfigError, match=r"data\.valid\.format: must be one of text, table"):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("model:\n  d_model: big\n", "model.d_model", "expected an integer"),
        ("model:\n  d_model: 25.5\n", "model.d_model", "expected an integer"),
        ("model:\n  d_model: true\n", "model.d_model", "expected an integer"),
        ("model:\n  dropout: high\n", "model.dropout", "expected a number"),
        ("model:\n  share_embeddings: 1\n", "model.share_embeddings", "expected true/false"),
        ("model:\n  activation: 3\n", "model.activation", "expected a string"),
        ("model: 5\n", "model", "expected a mapping"),
        ("training:\n  optimizer_betas: 0.9\n", "training.optimizer_betas", "expected a list"),
        ("training:\n  optimizer_betas: [0.9, x]\n", "training.optimizer_betas[1]", "a number"),
    ],
)
def test_wrong_types_name_the_key_and_the_expected_type(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(path)
    assert info.value.key == key
    assert str(info.value).startswith(f"{path}: {key}:")


def test_impossible_values_in_a_file_name_the_dotted_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  d_model: 30\n  num_heads: 4\n")
    with pytest.raises(ConfigError, match="divisible") as info:
        load_config(path)
    assert info.value.key == "model.d_model"
    assert str(path) in str(info.value)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  d_model: 256\n  num_heads: [4\ntraining:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="YAML syntax error at line 4") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- model\n- training\n"))


def test_missing_file_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_config(missing)
    assert str(missing) in str(info.value)


# ------------------------------------------------------------------------------- overrides


def test_overrides_replace_values_with_yaml_typed_values(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    config = load_config(
        path,
        [
            "model.d_model=128",
            "model.activation=gelu",
            "model.share_embeddings=true",
            "training.lr=0.0005",
            "training.optimizer_betas=[0.8, 0.9]",
            "data.valid.src_path=dev.de",
            "data.valid.tgt_path=dev.en",
        ],
    )
    assert config.model.d_model == 128 and isinstance(config.model.d_model, int)
    assert config.model.activation == "gelu"
    assert config.model.share_embeddings is True
    assert config.training.lr == pytest.approx(5e-4)
    assert config.training.optimizer_betas == [0.8, 0.9]
    assert config.data.valid is not None and config.data.valid.src_path == "dev.de"
    assert config.model.num_heads == 4  # from the file, not overridden


def test_scientific_notation_is_a_number_in_files_and_overrides(tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) reads 5e-4 without a dot as a string; users write it all the time.
    config = load_config(write(tmp_path, "training:\n  lr: 5e-4\n"), ["training.min_lr=1e-6"])
    assert config.training.lr == pytest.approx(5e-4)
    assert config.training.min_lr == pytest.approx(1e-6)


def test_later_overrides_win(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE), ["model.d_ff=64", "model.d_ff=32"])
    assert config.model.d_ff == 32


def test_override_does_not_change_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    load_config(path, ["model.d_model=128"])
    assert path.read_text(encoding="utf-8") == EXAMPLE
    assert load_config(path).model.d_model == 256


def test_unknown_override_key_suggests_the_dotted_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.d_modle: unknown key; did you mean 'd_model'"):
        load_config(write(tmp_path, EXAMPLE), ["model.d_modle=128"])


def test_override_of_wrong_type_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected an integer") as info:
        load_config(write(tmp_path, EXAMPLE), ["model.d_model=wide"])
    assert info.value.key == "model.d_model"


@pytest.mark.parametrize("text", ["model.d_model", "=5"])
def test_malformed_override_is_a_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="override"):
        load_config(write(tmp_path, EXAMPLE), [text])


def test_override_inside_a_non_mapping_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="non-mapping") as info:
        load_config(write(tmp_path, EXAMPLE), ["model.d_model.x=1"])
    assert info.value.key == "model.d_model.x"


# ------------------------------------------------------------------------------ round trip


def test_save_then_load_gives_the_same_config(tmp_path: Path) -> None:
    config = Config(
        model=ModelConfig(
            src_vocab_size=300,
            tgt_vocab_size=300,
            d_model=64,
            num_heads=4,
            d_ff=128,
            share_embeddings=True,
            activation="gelu",
            norm_position="pre",
        ),
        data=DataConfig(
            train=CorpusConfig(format="hub", name="wmt14", subset="de-en", split="train"),
            valid=CorpusConfig(src_path="dev.de", tgt_path="dev.en"),
            max_length=100,
        ),
    )
    config.training.lr = 3e-4
    path = tmp_path / "saved.yaml"
    save_config(config, path)
    loaded = load_config(path)
    assert loaded == config
    save_config(loaded, tmp_path / "again.yaml")
    assert (tmp_path / "again.yaml").read_text() == path.read_text()
