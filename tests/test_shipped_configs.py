"""The YAML files in configs/: valid, every key commented, and the comments true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from transformer.config import load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_there_are_shipped_configs() -> None:
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_each_shipped_config_loads(path: Path) -> None:
    load_config(path)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_every_key_of_a_shipped_config_has_a_comment(path: Path) -> None:
    # A key that comes again (valid: repeats train:'s fields) is explained where it first is.
    explained: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        key = re.match(r"\s+([a-z_]+):", line)  # top-level sections need no comment
        if key is None:
            continue
        if "#" in line:
            explained.add(key.group(1))
        assert key.group(1) in explained, f"{path.name}:{number} has no comment: {line}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_the_d_k_in_a_comment_is_d_model_over_num_heads(path: Path) -> None:
    config = load_config(path).model
    said = re.search(r"d_k = (\d+)", path.read_text(encoding="utf-8"))
    assert said is not None, f"{path.name} should say what d_k is next to num_heads"
    assert int(said.group(1)) == config.d_model // config.num_heads
