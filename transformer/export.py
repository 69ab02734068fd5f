"""A run directory's model as a CTranslate2 model directory (`transformer-export`).

An export is a directory that CTranslate2 loads, and that translates on its own::

    OUT/model.bin, OUT/config.json      CTranslate2's files, written by its own ModelSpec.save
    OUT/shared_vocabulary.json          the pieces in id order (source_ and target_ when
                                        the run has two tokenizers)
    OUT/spm.model                       the run's SentencePiece model(s): spm.model, or
                                        src.model + tgt.model
    OUT/export.json                     what was exported: the checkpoint (path, size, time),
                                        the quantization, the run's config, the versions

It is built in a temporary directory beside OUT and renamed into place only when complete,
so a failed export leaves OUT as it was. OUT may be new, empty, or an earlier export (which
is replaced); anything else (a file, a directory of other files) is refused.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from transformer.checkpoint import TOKENIZER_DIR, resolve_checkpoint
from transformer.config import Config, ConfigError, config_from_dict, config_to_dict
from transformer.ctranslate2_spec import (
    ExportError,
    import_ctranslate2,
    transformer_spec,
)
from transformer.search import max_output_lengths
from transformer.special_ids import PAD_ID
from transformer.tokenizer import JOINT_MODEL, SRC_MODEL, TGT_MODEL, Tokenizer
from transformer.translator import Translator

logger = logging.getLogger(__name__)

FORMAT = "ctranslate2"
RECORD_FILE = "export.json"
DEFAULT_EXPORT_DIR = "ctranslate2"  # inside the run directory: where the engine looks first
QUANTIZATIONS = ("float32", "int8", "int8_float32", "int16", "float16", "bfloat16")


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
    _check_output(output)
    ct2 = import_ctranslate2()
    path = resolve_checkpoint(run_dir, checkpoint).resolve()
    identity = _checkpoint_identity(path)  # before loading: a file replaced meanwhile shows
    translator = Translator.from_run(run_dir, str(path), device="cpu")
    config, tokenizers = translator.config, translator.tokenizers
    target_positions = _target_positions(config)
    spec = transformer_spec(
        translator.model,
        _pieces(tokenizers.src),
        _pieces(tokenizers.tgt),
        target_positions or config.model.max_positions,
    )
    spec.validate()
    spec.optimize(quantization=quantization)
    record = ExportRecord(
        format=FORMAT,
        quantization=quantization,
        checkpoint=identity[0],
        checkpoint_size=identity[1],
        checkpoint_mtime_ns=identity[2],
        max_target_positions=target_positions,
        ctranslate2_version=ct2.__version__,
        torch_version=torch.__version__,
        config=config_to_dict(config),
    )
    names = [JOINT_MODEL] if tokenizers.joint else [SRC_MODEL, TGT_MODEL]
    tokenizer_files = [Path(run_dir) / TOKENIZER_DIR / name for name in names]

    def write(directory: Path) -> None:
        spec.save(str(directory))
        for file in tokenizer_files:
            shutil.copyfile(file, directory / file.name)
        text = json.dumps(asdict(record), indent=2, ensure_ascii=False) + "\n"
        (directory / RECORD_FILE).write_text(text, encoding="utf-8")

    _write_directory(output, write)
    logger.debug("exported %s (%s) to %s", path, quantization, output)
    return record


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
        values = json.loads(path.read_text(encoding="utf-8"))
        record = ExportRecord(**values)
        record.run_config(str(path))
    except (OSError, ValueError, TypeError, ConfigError) as error:
        raise ExportError(
            f"{path} is damaged ({str(error).splitlines()[0][:200]}); export the run again"
        ) from None
    if record.format != FORMAT:
        raise ExportError(f"{path}: format {record.format!r} is not {FORMAT!r}")
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


def _target_positions(config: Config) -> int | None:
    """How many target positions the export's decoder can read: None for rope (any).

    Learned positions stop at max_positions, as in the model. A sinusoidal decoder gets a
    table long enough for the longest output the run's decoding settings allow (for the
    longest source), so that both engines may write the same lengths.
    """
    model = config.model
    if model.positional_encoding == "rope":
        return None
    if model.positional_encoding == "learned":
        return model.max_positions
    longest_source = torch.ones(1, model.max_positions, dtype=torch.long)  # (1, S), no PAD
    decoding = config.decoding
    longest = max_output_lengths(longest_source, decoding.max_len_a, decoding.max_len_b, PAD_ID)
    return max(model.max_positions, longest[0])


def _checkpoint_identity(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _check_output(output: Path) -> None:
    """Refuse an output that is a file, or a directory holding anything but an export."""
    if output.is_file() or (output.exists() and not output.is_dir()):
        raise ExportError(f"--output {output} is a file; give a directory to write the export to")
    if output.is_dir() and any(output.iterdir()) and not (output / RECORD_FILE).is_file():
        raise ExportError(
            f"--output {output} is a directory of other files (no {RECORD_FILE}); give a new "
            "or empty directory, or an earlier export to replace"
        )


def _write_directory(output: Path, write: Any) -> None:
    """Call `write(directory)` on a temporary directory beside `output`, then put it in place.

    An existing `output` is moved aside first and deleted once the new one is in place; on
    any failure the temporary directory is removed and `output` is left as it was.
    """
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = output.parent / f".{output.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        staging.mkdir()  # not mkdtemp: the export gets the permissions the umask gives
    except OSError as error:
        raise ExportError(f"cannot write {output}: {error.strerror or error}") from None
    old = staging.with_name(staging.name + ".old")
    try:
        write(staging)
        if output.exists():
            os.replace(output, old)
        try:
            os.replace(staging, output)
        except BaseException:
            if old.exists():
                os.replace(old, output)
            raise
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError(f"cannot write {output}: {error.strerror or error}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
