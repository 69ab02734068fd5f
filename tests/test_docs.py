"""The documentation cannot rot: its links lead somewhere, its code links name real functions,
its pictures exist, every page can be found from the README, and the README stays a guide."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
WALKTHROUGH = REPO / "docs" / "walkthrough.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
DOCS = [README, *PAGES]
README_MAX_LINES = 300

CODE_LINK = re.compile(r"\[`([\w.]+)`\]\(([^)#]+\.py)\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")
LINK = re.compile(r"\]\(([^)\s]+)\)")  # links and pictures alike: [text](target), ![alt](target)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # https:, mailto:, ...
# Paths written as code text (`transformer/decoding/search.py`). benchmarks/ is left out until
# the scripts/ -> benchmarks/ move is merged; add it to the group then.
CODE_PATH = re.compile(r"`((?:transformer|configs|scripts|tests|benchmarks)/[\w./-]*[\w/])`")


def prose(doc: Path) -> str:
    """The page without its fenced code blocks, where brackets are code, not links."""
    return FENCE.sub("", doc.read_text(encoding="utf-8"))


def name(doc: Path) -> str:
    return str(doc.relative_to(REPO))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    """Every heading anchor of a page, with GitHub's -1, -2 ... for repeated headings."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(prose(doc)):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(doc: Path) -> list[tuple[Path, str]]:
    """(target file, anchor) of each link of the page that stays inside the repository."""
    links = []
    for target in LINK.findall(prose(doc)):
        if EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        links.append(((doc.parent / path).resolve() if path else doc, anchor))
    return links


@pytest.mark.parametrize("doc", DOCS, ids=name)
def test_each_code_link_names_a_function_or_class_defined_in_that_file(doc: Path) -> None:
    links = CODE_LINK.findall(prose(doc))
    for name_, target in links:
        path = (doc.parent / target).resolve()
        assert path.is_file(), f"{doc.name}: {target} does not exist"
        last = name_.split(".")[-1]
        source = path.read_text(encoding="utf-8")
        assert re.search(rf"^\s*(def|class) {last}\b", source, re.MULTILINE) or re.search(
            rf"^{last}\b", source, re.MULTILINE
        ), f"{doc.name}: {target} defines no {name_}"


def test_the_walkthrough_links_the_code_of_every_part_of_the_model() -> None:
    links = {name_ for name_, _ in CODE_LINK.findall(WALKTHROUGH.read_text(encoding="utf-8"))}
    for part in ("scaled_dot_product_attention", "MultiHeadAttention", "sinusoidal_table",
                 "AddNorm", "FeedForward", "causal_mask", "Transformer.decode", "beam_search",
                 "label_smoothed_loss", "noam_lr"):  # fmt: skip
        assert part in links


@pytest.mark.parametrize("doc", DOCS, ids=name)
def test_each_picture_of_the_docs_exists(doc: Path) -> None:
    for target in IMAGE.findall(prose(doc)):
        assert (doc.parent / target).is_file(), f"{doc.name} shows {target}, which is missing"


@pytest.mark.parametrize("doc", DOCS, ids=name)
def test_each_relative_link_leads_to_a_file_and_heading_that_exist(doc: Path) -> None:
    for path, anchor in relative_links(doc):
        assert path.exists(), f"{name(doc)} links {path}, which does not exist"
        if anchor:
            assert path.suffix == ".md", f"{name(doc)} links #{anchor} in {path.name}"
            assert anchor in anchors(path), f"{name(doc)} links {path.name}#{anchor}: no heading"


@pytest.mark.parametrize("doc", DOCS, ids=name)
def test_each_path_written_as_code_exists(doc: Path) -> None:
    for path in CODE_PATH.findall(prose(doc)):
        if "*" not in path:
            assert (REPO / path).exists(), f"{name(doc)} names {path}, which does not exist"


def test_every_docs_page_can_be_reached_from_the_readme() -> None:
    reached, todo = {README}, [README]
    while todo:
        for path, _ in relative_links(todo.pop()):
            if path.suffix == ".md" and path.parent == REPO / "docs" and path not in reached:
                reached.add(path)
                todo.append(path)
    missing = [name(page) for page in PAGES if page not in reached]
    assert not missing, f"no link from README.md leads to {missing}"


def test_the_readme_is_a_guide_of_at_most_300_lines() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move details to docs/"


def test_the_readme_python_example_runs_and_its_shape_comment_is_true() -> None:
    text = README.read_text(encoding="utf-8")
    (code,) = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    said = re.search(r"maps\.cross\.shape\s+# .* = (\([\d, ]+\))", code)
    assert said is not None
    assert str(tuple(namespace["maps"].cross.shape)) == said.group(1)
