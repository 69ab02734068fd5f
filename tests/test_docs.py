"""The documentation cannot rot: its code links name real functions, its pictures exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "docs" / "walkthrough.md"]
CODE_LINK = re.compile(r"\[`([\w.]+)`\]\(([^)#]+\.py)\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_each_code_link_names_a_function_or_class_defined_in_that_file(doc: Path) -> None:
    links = CODE_LINK.findall(doc.read_text(encoding="utf-8"))
    for name, target in links:
        path = (doc.parent / target).resolve()
        assert path.is_file(), f"{doc.name}: {target} does not exist"
        last = name.split(".")[-1]
        source = path.read_text(encoding="utf-8")
        assert re.search(rf"^\s*(def|class) {last}\b", source, re.MULTILINE) or re.search(
            rf"^{last}\b", source, re.MULTILINE
        ), f"{doc.name}: {target} defines no {name}"


def test_the_walkthrough_links_the_code_of_every_part_of_the_model() -> None:
    links = {name for name, _ in CODE_LINK.findall(DOCS[1].read_text(encoding="utf-8"))}
    for part in ("scaled_dot_product_attention", "MultiHeadAttention", "sinusoidal_table",
                 "AddNorm", "FeedForward", "causal_mask", "Transformer.decode", "beam_search",
                 "label_smoothed_loss", "noam_lr"):  # fmt: skip
        assert part in links


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_each_picture_of_the_docs_exists(doc: Path) -> None:
    for target in IMAGE.findall(doc.read_text(encoding="utf-8")):
        assert (doc.parent / target).is_file(), f"{doc.name} shows {target}, which is missing"


def test_the_readme_python_example_runs_and_its_shape_comment_is_true() -> None:
    text = DOCS[0].read_text(encoding="utf-8")
    (code,) = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    said = re.search(r"maps\.cross\.shape\s+# .* = (\([\d, ]+\))", code)
    assert said is not None
    assert str(tuple(namespace["maps"].cross.shape)) == said.group(1)
