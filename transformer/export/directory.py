"""A run directory's model as a CTranslate2 model directory (`transformer-export`).

An export is a directory that CTranslate2 loads, and that translates on its own::

    OUT/model.bin, OUT/config.json      CTranslate2's files, written by its own ModelSpec.save
    OUT/shared_vocabulary.json          the pieces in id order (source_ and target_ when
                                        the run has two tokenizers)
    OUT/spm.model                       the run's SentencePiece model(s): spm.model, or
                                        src.model + tgt.model
    OUT/export.json                     what was exported: the checkpoint (path, size, time),
                                        the quantization, the run's config, the versions,
                                        the files of the export

It is built in a temporary directory beside OUT and renamed into place only when complete,
so a failed export leaves OUT as it was. OUT may be new, empty, or an earlier export, which
is replaced: a directory holding a complete export.json and only the files it lists. Anything
else (a file, a directory holding one other file) is refused, and nothing in it is touched.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from transformer.config import Config, ConfigError, config_from_dict, config_to_dict
from transformer.data.tokenizer import JOINT_MODEL, SRC_MODEL, TGT_MODEL, Tokenizer
from transformer.decoding.search import max_output_length
from transformer.decoding.translator import Translator
from transformer.export.spec import (
    ExportError,
    import_ctranslate2,
    transformer_spec,
)
from transformer.files import atomic_directory, sweep_temporaries
from transformer.training.checkpoint import TOKENIZER_DIR, resolve_checkpoint

logger = logging.getLogger(__name__)

FORMAT = "ctranslate2"
RECORD_FILE = "export.json"
DEFAULT_EXPORT_DIR = "ctranslate2"  # inside the run directory: where the engine looks first
QUANTIZATIONS = ("float32", "int8", "int8_float32", "int16", "float16", "bfloat16")
# Every name an export writes: how an export made before export.json listed its files is
# recognised as one to replace.
_EXPORT_FILES = frozenset(
    {"model.bin", "config.json", "shared_vocabulary.json", "source_vocabulary.json",
     "target_vocabulary.json", JOINT_MODEL, SRC_MODEL, TGT_MODEL, RECORD_FILE}
)  # fmt: skip


@dataclass(frozen=True)
class ExportRecord:
    """What an export holds: written to OUT/export.json, read back by the engine."""

    format: str
    quantization: str
    checkpoint: str  # the resolved checkpoint file, absolute
    checkpoint_size: int
    checkpoint_mtime_ns: int
    max_target_positions: int | None  # the most tokens the decoder can write (None: any)
    ctranslate2_version: str
    torch_version: str
    config: dict[str, Any]  # the run's resolved config (vocabulary sizes filled in)
    files: list[str] | None = None  # the names in the export (None: made before they were kept)

    def run_config(self, source: str) -> Config:
        """The run's config, as the run directory had it when exported."""
        return config_from_dict(self.config, source)

    def exports(self, checkpoint: Path) -> bool:
        """Whether this export was made from `checkpoint` as that file is now (its path,
        size and modification time: training rewrites a checkpoint by renaming a new file)."""
        exported = (self.checkpoint, self.checkpoint_size, self.checkpoint_mtime_ns)
        return exported == _checkpoint_identity(checkpoint)


def default_export_dir(run_dir: str | Path) -> Path:
    """Where a run keeps the export that `--engine ctranslate2` uses by default."""
    return Path(run_dir) / DEFAULT_EXPORT_DIR


def export_run(
    run_dir: str | Path,
    output: str | Path,
    checkpoint: str = "best",
    quantization: str = "float32",
) -> ExportRecord:
    """Export a run's checkpoint ("best", "last", "averaged" or a path) to `output`."""
    if quantization not in QUANTIZATIONS:
        raise ExportError(f"quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    output = Path(output)
    sweep_temporaries(output.parent)  # a kill that left an earlier export aside puts it back
    _check_output(output)
    ct2 = import_ctranslate2()
    path = resolve_checkpoint(run_dir, checkpoint).resolve()
    identity = _checkpoint_identity(path)  # before loading: a file replaced meanwhile shows
    translator = Translator.from_run(run_dir, str(path), device="cpu")
    config, tokenizers = translator.config, translator.tokenizers
    positions = target_positions(translator)
    spec = transformer_spec(
        translator.model,
        _pieces(tokenizers.src),
        _pieces(tokenizers.tgt),
        positions or config.model.max_positions,
    )
    spec.validate()
    spec.optimize(quantization=quantization)
    record = ExportRecord(
        format=FORMAT,
        quantization=quantization,
        checkpoint=identity[0],
        checkpoint_size=identity[1],
        checkpoint_mtime_ns=identity[2],
        max_target_positions=positions,
        ctranslate2_version=ct2.__version__,
        torch_version=torch.__version__,
        config=config_to_dict(config),
    )
    names = [JOINT_MODEL] if tokenizers.joint else [SRC_MODEL, TGT_MODEL]
    tokenizer_files = [Path(run_dir) / TOKENIZER_DIR / name for name in names]

    def write(directory: Path) -> ExportRecord:
        spec.save(str(directory))
        for file in tokenizer_files:
            shutil.copyfile(file, directory / file.name)
        written = replace(record, files=sorted({*os.listdir(directory), RECORD_FILE}))
        text = json.dumps(asdict(written), indent=2, ensure_ascii=False) + "\n"
        (directory / RECORD_FILE).write_text(text, encoding="utf-8")
        return written

    exported = atomic_directory(output, write)
    logger.debug("exported %s (%s) to %s", path, quantization, output)
    return exported


def read_export(directory: str | Path) -> ExportRecord:
    """The record of an export directory; an `ExportError` if it is not one."""
    directory = Path(directory)
    path = directory / RECORD_FILE
    if not path.is_file() or not (directory / "model.bin").is_file():
        raise ExportError(
            f"{directory} is not a CTranslate2 export (no {RECORD_FILE} and model.bin); make "
            f"one with transformer-export --run RUN --format {FORMAT} --output {directory}"
        )
    try:
        return _read_record(path)
    except ExportError as error:
        raise ExportError(f"{path} is damaged ({error}); export the run again") from None


def _read_record(path: Path) -> ExportRecord:
    """The record in an export.json, complete; an `ExportError` saying what is wrong."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(values, dict):
            raise ValueError("not a JSON object")
        required = [field.name for field in fields(ExportRecord) if field.default is MISSING]
        if missing := [name for name in required if name not in values]:
            raise ValueError(f"no {', '.join(missing)}")
        record = ExportRecord(**values)
        record.run_config(str(path))
    except (OSError, ValueError, TypeError, ConfigError) as error:
        raise ExportError(str(error).splitlines()[0][:200] or type(error).__name__) from None
    if record.format != FORMAT:
        raise ExportError(f"format {record.format!r} is not {FORMAT!r}")
    names = record.files
    if names is not None and not (
        isinstance(names, list) and all(isinstance(name, str) for name in names)
    ):
        raise ExportError(f"files is not a list of names: {names!r}"[:200])
    return record


def ensure_export(run_dir: str | Path, checkpoint: str = "best") -> Path:
    """The run's default export of `checkpoint`, made (or remade) first when it has none.

    An export of another checkpoint, or of this checkpoint file before it was rewritten, is
    replaced (keeping its quantization); the log says so in one line.
    """
    directory = default_export_dir(run_dir)
    path = resolve_checkpoint(run_dir, checkpoint).resolve()
    quantization = "float32"
    if (directory / RECORD_FILE).is_file():
        record = read_export(directory)
        if record.exports(path):
            return directory
        quantization = record.quantization
        logger.info(
            "%s holds an export of %s; exporting %s (%s) in its place",
            directory,
            record.checkpoint,
            path,
            quantization,
        )
    else:
        logger.info("%s has no CTranslate2 export: exporting %s to %s", run_dir, path, directory)
    export_run(run_dir, directory, str(path), quantization)
    return directory


def _pieces(tokenizer: Tokenizer) -> list[str]:
    """The vocabulary in id order, as CTranslate2 reads tokens."""
    return [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]


def target_positions(translator: Translator) -> int | None:
    """How many target positions the export's decoder can read: None for rope (CTranslate2
    rotates any position; it keeps no table).

    Otherwise a table at least max_positions long, and long enough for the longest output the
    search would write (`max_output_length`) for the longest source the translator passes,
    so that both engines may write the same lengths: learned positions stop at the model's
    `max_target_positions`, sinusoidal ones go on as far as the run's decoding settings say.
    """
    model, decoding = translator.config.model, translator.config.decoding
    if model.positional_encoding == "rope":
        return None
    longest_source = translator.max_source_tokens + 1  # EOS included
    longest = max_output_length(
        longest_source,
        decoding.max_len_a,
        decoding.max_len_b,
        translator.model.max_target_positions,
    )
    return max(model.max_positions, longest)


def _checkpoint_identity(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _check_output(output: Path) -> None:
    """Refuse a file, or a directory holding anything but what an earlier export wrote."""
    if output.is_file() or (output.exists() and not output.is_dir()):
        raise ExportError(f"{output} is a file; give a directory to write the export to")
    if not output.is_dir():
        return
    entries = sorted(os.scandir(output), key=lambda entry: entry.name)
    if not entries:
        return
    record, damage = None, f"no {RECORD_FILE}"
    if (output / RECORD_FILE).is_file():
        try:
            record = _read_record(output / RECORD_FILE)
        except ExportError as error:
            damage = f"its {RECORD_FILE} is not an export's record: {error}"
    ours = _EXPORT_FILES if record is None or record.files is None else set(record.files)
    keep = "so nothing was replaced; export to a new or empty directory"
    for entry in entries:
        if entry.name not in ours or not entry.is_file(follow_symlinks=False):
            raise ExportError(
                f"{output} is a directory of other files: {entry.name} is not part of an "
                f"export, {keep}, or move {entry.name} away"
            )
    if record is None:
        raise ExportError(f"{output} is not an earlier export ({damage}), {keep}")
