"""Fetch Multi30k task 1 (train, val, test_2016_flickr; gzipped text) and check it.

Downloads the raw files of the official repository (github.com/multi30k/dataset,
data/task1/raw/) or copies them from a local folder, then verifies every file: valid gzip,
UTF-8 text, the expected number of lines (29,000 / 1,014 / 1,000), and the languages of a
split aligned (as many lines, and a line empty in one language only where it is empty in all).

    python scripts/prepare_multi30k.py                                 # download: data/multi30k
    python scripts/prepare_multi30k.py --from ../shared/data/multi30k  # copy a local copy
    python scripts/prepare_multi30k.py --langs en de                   # English and German only

Files already in --out are kept (not downloaded again) unless --force; they are verified all
the same. Each file is written to a temporary name and renamed, so an interrupted run never
leaves a truncated file under the final name. Problems end with a one-line `error: ...` and
exit code 2.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from transformer.cli.common import run_command
from transformer.errors import UserError

BASE_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
SPLITS: dict[str, int] = {"train": 29_000, "val": 1_014, "test_2016_flickr": 1_000}
LANGUAGES = ("en", "de", "fr")
DEFAULT_OUT = Path("data/multi30k")
CHUNK_BYTES = 1 << 16
TIMEOUT_S = 60.0


class PrepareError(UserError):
    """A file that cannot be fetched, copied or verified."""


@dataclass(frozen=True)
class SplitSummary:
    """What verification found in one split."""

    split: str
    lines: int
    words: dict[str, int]  # language -> whitespace-separated words

    def describe(self) -> str:
        """E.g. "val   1014 lines   words/line: en 12.0 de 11.4"."""
        per_line = " ".join(
            f"{lang} {count / max(self.lines, 1):.1f}" for lang, count in self.words.items()
        )
        return f"{self.split:<17} {self.lines:>6} lines   words/line: {per_line}"


def file_name(split: str, lang: str) -> str:
    """The name of one file, e.g. "train.en.gz"."""
    return f"{split}.{lang}.gz"


def file_names(splits: Sequence[str], langs: Sequence[str]) -> list[str]:
    """Every file of `splits` in `langs`."""
    return [file_name(split, lang) for split in splits for lang in langs]


def write_atomically(target: Path, fill: Callable[[BinaryIO], None]) -> None:
    """Call `fill(file)` on a temporary file beside `target`, then rename it to `target`."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".part"
        )
    except OSError as error:
        raise PrepareError(f"cannot write {target}: {error.strerror or error}") from None
    try:
        with os.fdopen(handle, "wb") as file:
            fill(file)
        os.replace(temporary, target)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise PrepareError(f"cannot write {target}: {error.strerror or error}") from None
        raise


def download(url: str, target: Path, timeout: float = TIMEOUT_S) -> None:
    """Fetch `url` into `target` (atomically); a network failure is a PrepareError."""

    def fill(file: BinaryIO) -> None:
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            raise network_error(url, error) from None
        with response:
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except (http.client.HTTPException, OSError) as error:
                    raise network_error(url, error) from None
                if not chunk:
                    break
                file.write(chunk)

    write_atomically(target, fill)


def network_error(url: str, error: BaseException) -> PrepareError:
    """The one-line error for a failed download, pointing at --from."""
    reason = str(getattr(error, "reason", None) or error) or type(error).__name__
    return PrepareError(
        f"cannot download {url} ({reason}); without network access, copy the files "
        "from a local folder with --from DIR"
    )


def copy(source: Path, target: Path) -> None:
    """Copy `source` to `target` (atomically); a missing source file is a PrepareError."""
    if not source.is_file():
        raise PrepareError(f"--from: file not found: {source}; the folder needs {source.name}")

    def fill(file: BinaryIO) -> None:
        with source.open("rb") as original:
            shutil.copyfileobj(original, file, CHUNK_BYTES)

    write_atomically(target, fill)


def read_lines(path: Path) -> list[str]:
    """The lines of a gzipped UTF-8 text file, split on "\\n" only, as training reads them."""
    if not path.is_file():
        raise PrepareError(f"file not found: {path}; run without --verify-only to fetch it")
    try:
        with gzip.open(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError, zlib.error) as error:
        raise PrepareError(
            f"{path} is not a valid gzip file ({error}); delete it and fetch it again (--force)"
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise PrepareError(f"{path}: line {line} is not valid UTF-8; fetch it again") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return lines


def verify_split(
    directory: Path, split: str, langs: Sequence[str], expected_lines: int | None
) -> SplitSummary:
    """Check the files of one split: readable, `expected_lines` long (if given), aligned."""
    lines = {lang: read_lines(directory / file_name(split, lang)) for lang in langs}
    for lang, text in lines.items():
        if expected_lines is not None and len(text) != expected_lines:
            raise PrepareError(
                f"{directory / file_name(split, lang)} has {len(text)} lines, expected "
                f"{expected_lines}; the file is incomplete or not Multi30k: fetch it again"
            )
    counts = {lang: len(text) for lang, text in lines.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{file_name(split, lang)} {n}" for lang, n in counts.items())
        raise PrepareError(f"{split}: the languages are not aligned (lines: {listed})")
    for number, row in enumerate(zip(*lines.values(), strict=True), start=1):
        empty = [not sentence.strip() for sentence in row]
        if any(empty) and not all(empty):
            blank = [lang for lang, is_empty in zip(lines, empty, strict=True) if is_empty]
            raise PrepareError(
                f"{split}: line {number} is empty in {', '.join(blank)} only; "
                "the languages are not aligned"
            )
    words = {lang: sum(len(sentence.split()) for sentence in text) for lang, text in lines.items()}
    return SplitSummary(split, next(iter(counts.values()), 0), words)


def fetch(
    out: Path,
    names: Sequence[str],
    source: Path | None,
    base_url: str,
    force: bool,
    report: Callable[[str], None],
) -> None:
    """Copy each file from `source`, or download the ones `out` lacks (all of them if `force`)."""
    for name in names:
        target = out / name
        if source is not None:
            if source.resolve() == out.resolve():
                continue  # verifying the files in place
            copy(source / name, target)
            report(f"copied {source / name}")
        elif force or not target.is_file():
            url = f"{base_url.rstrip('/')}/{name}"
            report(f"downloading {url}")
            download(url, target)
        else:
            report(f"kept {target} (--force fetches it again)")


def parse_expected(pairs: Sequence[str]) -> dict[str, int]:
    """The line-count table with `SPLIT=N` overrides applied."""
    expected = dict(SPLITS)
    for pair in pairs:
        split, _, count = pair.partition("=")
        if split not in SPLITS or not count.isdigit():
            raise PrepareError(
                f"--expect-lines {pair!r}: give SPLIT=N with SPLIT one of {', '.join(SPLITS)}"
            )
        expected[split] = int(count)
    return expected


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"where to put the files ({DEFAULT_OUT})"
    )
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=None,
        metavar="DIR",
        help="copy the files from this folder instead of downloading them",
    )
    parser.add_argument(
        "--langs", nargs="+", choices=LANGUAGES, default=list(LANGUAGES), help="languages"
    )
    parser.add_argument("--force", action="store_true", help="download files already there")
    parser.add_argument(
        "--verify-only", action="store_true", help="only check the files already in --out"
    )
    parser.add_argument("--base-url", default=BASE_URL, help="where the raw files are served")
    parser.add_argument(
        "--expect-lines",
        nargs="+",
        default=[],
        metavar="SPLIT=N",
        help="override the expected line counts (train=29000 val=1014 test_2016_flickr=1000)",
    )
    return parser.parse_args(argv)


def prepare(argv: list[str] | None = None) -> int:
    """Fetch (or copy) the files, verify them and print a summary."""
    args = parse_args(argv)
    expected = parse_expected(args.expect_lines)
    langs = list(dict.fromkeys(args.langs))  # in order, without repeats
    if args.source is not None and not args.source.is_dir():
        raise PrepareError(f"--from: {args.source} is not a folder")
    if not args.verify_only:
        names = file_names(list(SPLITS), langs)
        fetch(args.out, names, args.source, args.base_url, args.force, report)
    summaries = [verify_split(args.out, split, langs, expected[split]) for split in SPLITS]
    print(f"Multi30k task 1 in {args.out}, verified ({' '.join(langs)}):")
    for summary in summaries:
        print(f"  {summary.describe()}")
    return 0


def report(message: str) -> None:
    """Progress on stderr (stdout holds the summary)."""
    sys.stderr.write(f"{message}\n")


def main(argv: list[str] | None = None) -> int:
    """Entry point: a PrepareError becomes `error: ...` and exit code 2."""
    return run_command(prepare, argv)


if __name__ == "__main__":
    raise SystemExit(main())
