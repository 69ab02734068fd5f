"""A user's files, round two: what an export replaces, what an output may be, a full disk
under `torch.save`, and the temporaries a `kill -9` leaves behind.

Each test states a promise of docs/faults.md ("What happens when things go wrong"): a failed
command says why in one `error:` line (exit code 2) and leaves every file as it was.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tiny_runs import ENV, error_line, make_tiny_run, snapshot, tiny_config

from transformer.files import (
    atomic_directory,
    atomic_write,
    sweep_temporaries,
    temporary_path,
)
from transformer.training.checkpoint import load_checkpoint, save_checkpoint

EXPORT_FILES = {"model.bin", "config.json", "shared_vocabulary.json", "spm.model", "export.json"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("files") / "run")


@pytest.fixture
def run(tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of the tiny run (config, tokenizer, best.pt, last.pt), for a test to change."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


@pytest.fixture
def ctranslate2() -> None:
    pytest.importorskip("ctranslate2")


# =========================================================================== 1: exports


@pytest.mark.usefixtures("ctranslate2")
def test_export_refuses_a_folder_with_an_empty_export_json_and_touches_none_of_its_files(
    cli, run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "export.json").write_text("{}\n", encoding="utf-8")
    (out / "thesis.tex").write_text("chapter 1\n", encoding="utf-8")
    (out / "sub" / "notes.txt").write_text("notes\n", encoding="utf-8")
    before = snapshot(out)
    result = cli("export", "--run", run, "--format", "ctranslate2", "--output", out)
    error_line(result, str(out), "sub is not part of an export", "nothing was replaced")
    assert snapshot(out) == before


@pytest.mark.usefixtures("ctranslate2")
def test_export_records_its_files_and_replaces_a_folder_holding_only_them(
    cli, run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert cli("export", "--run", run, "--format", "ctranslate2", "--output", out).returncode == 0
    assert json.loads((out / "export.json").read_text(encoding="utf-8"))["files"] == sorted(
        EXPORT_FILES
    )
    result = cli("export", "--run", run, "--format", "ctranslate2", "--output", out,
                 "--checkpoint", "last", "--quantization", "int8")  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "export.json").read_text(encoding="utf-8"))
    assert record["checkpoint"].endswith("last.pt") and record["quantization"] == "int8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]  # nothing left beside


@pytest.mark.usefixtures("ctranslate2")
def test_export_refuses_an_earlier_export_holding_a_users_file_naming_it(
    cli, run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert cli("export", "--run", run, "--format", "ctranslate2", "--output", out).returncode == 0
    (out / "notes.txt").write_text("mine\n", encoding="utf-8")
    before = snapshot(out)
    result = cli("export", "--run", run, "--format", "ctranslate2", "--output", out)
    error_line(result, str(out), "notes.txt is not part of an export", "nothing was replaced")
    assert snapshot(out) == before


@pytest.mark.usefixtures("ctranslate2")
def test_translate_with_ctranslate2_refuses_to_remake_a_run_export_holding_a_users_file(
    cli, run: Path
) -> None:
    assert cli("translate", "--run", run, "--engine", "ctranslate2", "--text", "hi").returncode == 0
    export = run / "ctranslate2"
    (export / "notes.txt").write_text("mine\n", encoding="utf-8")
    best = run / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes())  # rewritten, as training does: the export is remade
    before = snapshot(export)
    result = cli("translate", "--run", run, "--engine", "ctranslate2", "--text", "hi")
    error_line(result, str(export), "notes.txt is not part of an export")
    assert snapshot(export) == before


@pytest.mark.usefixtures("ctranslate2")
@pytest.mark.parametrize("extra", [None, "notes.txt"])
def test_an_export_from_before_file_lists_is_replaced_only_if_it_holds_only_export_files(
    cli, run: Path, tmp_path: Path, extra: str | None
) -> None:
    out = tmp_path / "out"
    assert cli("export", "--run", run, "--format", "ctranslate2", "--output", out).returncode == 0
    record = json.loads((out / "export.json").read_text(encoding="utf-8"))
    del record["files"]  # as exports wrote it before they listed their files
    (out / "export.json").write_text(json.dumps(record), encoding="utf-8")
    if extra:
        (out / extra).write_text("mine\n", encoding="utf-8")
    before = snapshot(out)
    result = cli("export", "--run", run, "--format", "ctranslate2", "--output", out,
                 "--checkpoint", "last")  # fmt: skip
    if extra:
        error_line(result, f"{extra} is not part of an export")
        assert snapshot(out) == before
    else:
        assert result.returncode == 0, result.stderr
        assert {p.name for p in out.iterdir()} == EXPORT_FILES
        assert json.loads((out / "export.json").read_text())["checkpoint"].endswith("last.pt")


@pytest.mark.usefixtures("ctranslate2")
def test_an_export_whose_record_is_incomplete_is_not_replaced(
    cli, run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert cli("export", "--run", run, "--format", "ctranslate2", "--output", out).returncode == 0
    record = json.loads((out / "export.json").read_text(encoding="utf-8"))
    del record["config"]
    (out / "export.json").write_text(json.dumps(record), encoding="utf-8")
    before = snapshot(out)
    result = cli("export", "--run", run, "--format", "ctranslate2", "--output", out)
    error_line(result, str(out), "not an earlier export", "no config")
    assert snapshot(out) == before


# =========================================================================== 2: outputs


@pytest.mark.parametrize(
    "where",
    ["tokenizer/spm.model", "checkpoints/best.pt", "checkpoints/new.txt", "config.yaml",
     "a symlink to checkpoints/last.pt", "a hard link to tokenizer/spm.model"],
)  # fmt: skip
@pytest.mark.parametrize("program", ["translate", "evaluate"])
def test_an_output_that_is_one_of_the_runs_files_is_refused_and_the_run_is_untouched(
    cli, run: Path, tmp_path: Path, program: str, where: str
) -> None:
    if where.startswith("a symlink"):
        output = tmp_path / "elsewhere.txt"
        output.symlink_to(run / "checkpoints" / "last.pt")
    elif where.startswith("a hard link"):
        output = tmp_path / "elsewhere.txt"
        os.link(run / "tokenizer" / "spm.model", output)
    else:
        output = run / where
    text = tmp_path / "input.en"
    text.write_text("how are you\n", encoding="utf-8")
    before = snapshot(run)
    args = {
        "translate": ["--input", text],
        "evaluate": ["--source", text, "--reference", text],
    }[program]
    result = cli(program, "--run", run, *args, "--output", output)
    error_line(result, str(output), "write the output elsewhere")
    assert snapshot(run) == before


def test_an_attention_folder_inside_the_runs_checkpoints_is_refused(cli, run: Path) -> None:
    before = snapshot(run)
    result = cli("translate", "--run", run, "--text", "hi", "--attention",
                 run / "checkpoints" / "attention")  # fmt: skip
    error_line(result, "inside the run's checkpoints")
    assert snapshot(run) == before


def test_an_output_that_is_the_checkpoint_read_from_outside_the_run_is_refused(
    cli, run: Path, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "model.pt"
    shutil.copyfile(run / "checkpoints" / "last.pt", checkpoint)
    before = checkpoint.read_bytes()
    result = cli("translate", "--run", run, "--checkpoint", checkpoint, "--text", "hi",
                 "--output", checkpoint)  # fmt: skip
    error_line(result, "same file as --checkpoint", str(checkpoint))
    assert checkpoint.read_bytes() == before


def test_an_output_in_the_export_that_ctranslate2_reads_is_refused(
    cli, run: Path, tmp_path: Path
) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "model.bin").write_bytes(b"weights")
    result = cli("translate", "--run", run, "--engine", "ctranslate2", "--export", export,
                 "--text", "hi", "--output", export / "model.bin")  # fmt: skip
    error_line(result, "inside the CTranslate2 export", str(export))
    assert (export / "model.bin").read_bytes() == b"weights"


@pytest.mark.parametrize(
    "where", ["tokenizer/spm.model", "config.yaml", "checkpoints/last.pt", "checkpoints/best.pt"]
)
def test_average_refuses_to_write_over_a_file_of_the_run(cli, run: Path, where: str) -> None:
    checkpoints = run / "checkpoints"
    shutil.copyfile(checkpoints / "last.pt", run / "other.pt")
    before = snapshot(run)
    result = cli("average", "--run", run, "--checkpoints", run / "other.pt", run / "other.pt",
                 "--output", run / where)  # fmt: skip
    error_line(result, str(run / where), "write the output elsewhere")
    assert snapshot(run) == before


def test_average_writes_averaged_pt_and_new_files_beside_the_runs_checkpoints(
    cli, run: Path
) -> None:
    checkpoints = run / "checkpoints"
    inputs = [checkpoints / "last.pt", checkpoints / "best.pt"]
    assert cli("average", "--run", run, "--checkpoints", *inputs).returncode == 0
    assert load_checkpoint(checkpoints / "averaged.pt")["averaged_from"] == list(map(str, inputs))
    again = cli("average", "--run", run, "--checkpoints", *inputs)  # replaces its own output
    assert again.returncode == 0, again.stderr
    other = cli("average", "--run", run, "--checkpoints", *inputs, "--output",
                checkpoints / "avg2.pt")  # fmt: skip
    assert other.returncode == 0, other.stderr
    refused = cli("average", "--run", run, "--checkpoints", checkpoints / "averaged.pt",
                  checkpoints / "last.pt")  # fmt: skip
    error_line(refused, "same file as the input checkpoint", "averaged.pt")


# =========================================================================== 3: a full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mount a tmpfs of a given size in KiB (as root; skipped where mounting is not allowed)."""
    mounts: list[Path] = []

    def mount(kib: int) -> Path:
        point = tmp_path / f"disk{len(mounts)}"
        point.mkdir()
        if os.geteuid() != 0:
            pytest.skip("mounting a small filesystem needs root")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(point)],
                              capture_output=True)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounts.append(point)
        return point

    yield mount
    root = logging.getLogger()
    for handler in root.handlers[:]:  # a training's train.log keeps its filesystem busy
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
    for point in mounts:
        if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(point)], capture_output=True)


def test_average_on_a_full_disk_is_one_error_line_and_keeps_the_old_output(
    cli, run: Path, small_disk: Callable[[int], Path]
) -> None:
    disk = small_disk(64)  # a checkpoint of the tiny model is about 170 KiB
    output = disk / "averaged.pt"
    output.write_bytes(b"the old average")
    checkpoints = run / "checkpoints"
    result = cli("average", "--run", run, "--checkpoints", checkpoints / "last.pt",
                 checkpoints / "best.pt", "--output", output)  # fmt: skip
    error_line(result, f"cannot write {output}: No space left on device")
    assert snapshot(disk) == {"averaged.pt": b"the old average"}


def test_a_disk_filling_up_under_a_training_checkpoint_is_one_error_line_and_keeps_the_old(
    cli, tmp_path: Path, small_disk: Callable[[int], Path]
) -> None:
    trained = tmp_path / "trained"
    config = tiny_config(tmp_path, training={"max_steps": 2})
    assert cli("train", "--config", config, "--run-dir", trained).returncode == 0
    size = sum(p.stat().st_size for p in trained.rglob("*") if p.is_file())
    disk = small_disk(size // 1024 + 64)  # room for the run and its log, not a second last.pt
    run_dir = Path(shutil.copytree(trained, disk / "run"))
    before = snapshot(run_dir / "checkpoints")
    result = cli("train", "--run-dir", run_dir, "--resume", "--set", "training.max_steps=4")
    error_line(result, f"cannot write {run_dir / 'checkpoints' / 'last.pt'}", "No space left")
    assert snapshot(run_dir / "checkpoints") == before
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 2


def test_an_error_of_torch_save_that_is_not_the_disks_stays_what_it_is(tmp_path: Path) -> None:
    class Unsaveable:
        def __reduce__(self) -> tuple:
            raise RuntimeError("not a disk error")

    with pytest.raises(RuntimeError, match="not a disk error"):
        save_checkpoint({"model": Unsaveable()}, tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []


# =========================================================================== 11: leftovers


def killed_while_writing(target: Path, kind: str = "file") -> list[str]:
    """Names that a process killed with SIGKILL while writing `target` left beside it."""
    writer = {
        "file": "with atomic_write(target) as handle:\n    handle.write(b'half')\n    wait()",
        "directory": "atomic_directory(target, lambda d: wait())",
    }[kind]
    code = (
        "import sys, time\nfrom pathlib import Path\n"
        "from transformer.files import atomic_directory, atomic_write\n"
        "target = Path(sys.argv[1])\n"
        "def wait():\n    print('ready', flush=True)\n    time.sleep(60)\n" + writer
    )
    before = set(os.listdir(target.parent))
    process = subprocess.Popen([sys.executable, "-c", code, str(target)], env=ENV,
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    left = sorted(set(os.listdir(target.parent)) - before)
    assert left and all(f".transformer-{process.pid}-" in name for name in left), left
    return left


@pytest.mark.parametrize(
    "write",
    ["atomic_write", "save_checkpoint", "atomic_directory"],
)
def test_a_temporary_of_a_killed_process_is_removed_by_the_next_write_beside_it(
    tmp_path: Path, write: str
) -> None:
    killed = killed_while_writing(tmp_path / "out.txt")
    mine = temporary_path(tmp_path / "live.txt")  # of a process that runs: this one
    mine.write_text("being written", encoding="utf-8")
    foreign = [".x.tmp", ".out.txt.abc123.tmp", "out.transformer-1-00000000-x.tmp"]
    for name in foreign:
        (tmp_path / name).write_text("the user's", encoding="utf-8")
    if write == "atomic_write":
        with atomic_write(tmp_path / "other.txt") as handle:
            handle.write(b"new")
    elif write == "save_checkpoint":
        save_checkpoint({"model": {}}, tmp_path / "last.pt")
    else:
        atomic_directory(tmp_path / "export", lambda directory: None)
    names = set(os.listdir(tmp_path))
    assert not names & set(killed)
    assert {mine.name, *foreign} <= names
    assert (tmp_path / ".x.tmp").read_text(encoding="utf-8") == "the user's"


def test_a_translation_killed_midway_leaves_a_temporary_the_next_one_removes(
    cli, run: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out.de"
    killed = killed_while_writing(output)
    result = cli("translate", "--run", run, "--text", "how are you", "--output", output)
    assert result.returncode == 0, result.stderr
    assert not set(os.listdir(tmp_path)) & set(killed)


def test_an_export_staging_folder_of_a_killed_process_is_removed_by_the_next_export(
    tmp_path: Path,
) -> None:
    killed_while_writing(tmp_path / "export", kind="directory")
    atomic_directory(tmp_path / "export", lambda directory: (directory / "a").write_text("a"))
    assert sorted(os.listdir(tmp_path)) == ["export"]  # the staging folder of the killed one gone


def test_an_export_moved_aside_by_a_killed_process_is_put_back(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "model.bin").write_bytes(b"weights")
    code = (
        "import os, sys\nfrom pathlib import Path\nfrom transformer.files import temporary_path\n"
        "export = Path(sys.argv[1])\nstaging = temporary_path(export)\n"
        "os.replace(export, staging.with_name(staging.name + '.old'))\n"
    )  # killed between moving the old export aside and putting the new one in its place
    subprocess.run([sys.executable, "-c", code, str(export)], env=ENV, check=True)
    assert not export.exists()
    sweep_temporaries(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["export"]
    assert (export / "model.bin").read_bytes() == b"weights"
