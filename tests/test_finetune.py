"""transformer-train --init-from: a new run that starts from a trained run's weights and tokenizer.

The parent is only read (byte for byte untouched); the child keeps its parent's model and
tokenizer, records where it came from, and resumes from its own checkpoints like any run.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from tiny_runs import assert_one_line_error, call_main, tiny_config

from transformer.cli.train import main as train_main
from transformer.config import load_config, load_config_values
from transformer.data.tokenizer import BOS_ID, EOS_ID, load_tokenizers
from transformer.model import Transformer
from transformer.training.checkpoint import load_checkpoint
from transformer.training.finetune import inherit_config

# Another domain than the shipped corpus (travel phrases): computers and offices.
NEW_DOMAIN = [
    ("the computer is new", "der computer ist neu"),
    ("the printer is broken", "der drucker ist kaputt"),
    ("open the file", "oeffne die datei"),
    ("save the document", "speichere das dokument"),
    ("the screen is dark", "der bildschirm ist dunkel"),
    ("the keyboard is old", "die tastatur ist alt"),
    ("close the window", "schliesse das fenster"),
    ("the meeting starts now", "die besprechung beginnt jetzt"),
    ("send the email", "sende die email"),
    ("the office is closed", "das buero ist geschlossen"),
    ("print the letter", "drucke den brief"),
    ("the mouse is small", "die maus ist klein"),
    ("delete the file", "loesche die datei"),
    ("the network is slow", "das netz ist langsam"),
    ("the password is wrong", "das passwort ist falsch"),
    ("call the manager", "ruf den chef an"),
    ("the report is ready", "der bericht ist fertig"),
    ("copy the table", "kopiere die tabelle"),
    ("the disk is full", "die platte ist voll"),
    ("restart the computer", "starte den computer neu"),
    ("the screen is new", "der bildschirm ist neu"),
    ("open the document", "oeffne das dokument"),
    ("the printer is old", "der drucker ist alt"),
    ("save the table", "speichere die tabelle"),
    ("the network is broken", "das netz ist kaputt"),
    ("print the report", "drucke den bericht"),
    ("the keyboard is small", "die tastatur ist klein"),
    ("send the report", "sende den bericht"),
    ("the office is dark", "das buero ist dunkel"),
    ("close the file", "schliesse die datei"),
]


def write_new_domain(directory: Path) -> dict[str, str]:
    """The new-domain pairs as a text corpus; the `data.train` section that reads it."""
    directory.mkdir(parents=True, exist_ok=True)
    sources, targets = zip(*NEW_DOMAIN, strict=True)
    (directory / "new.en").write_text("\n".join(sources) + "\n", encoding="utf-8")
    (directory / "new.de").write_text("\n".join(targets) + "\n", encoding="utf-8")
    return {"src_path": str(directory / "new.en"), "tgt_path": str(directory / "new.de")}


def child_config(tmp_path: Path, **sections: dict) -> Path:
    """A fine-tuning config: the tiny recipe on the new domain; `sections` update it."""
    corpus = write_new_domain(tmp_path / "new")
    data = {"train": corpus, "valid": None, "cache_dir": str(tmp_path / "child-cache")}
    training = {"max_steps": 40, "lr": 2e-3, "batch_tokens": 300, **sections.pop("training", {})}
    (tmp_path / "child").mkdir(exist_ok=True)
    return tiny_config(tmp_path / "child", data=data, training=training, **sections)


def snapshot(directory: Path) -> dict[Path, tuple[bytes, int]]:
    """Every file under `directory`: its bytes and its modification time."""
    return {
        path: (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained on the shipped corpus."""
    tmp_path = tmp_path_factory.mktemp("parent")
    config = tiny_config(tmp_path, training={"max_steps": 30})
    run_dir = tmp_path / "run"
    assert call_main(train_main, ["--config", config, "--run-dir", run_dir]) == 0
    return run_dir


def loss_on_new_domain(run_dir: Path) -> float:
    """Mean cross-entropy per target token of the run's last.pt on `NEW_DOMAIN`."""
    config = load_config(run_dir / "config.yaml")
    tokenizers = load_tokenizers(run_dir / "tokenizer")
    model = Transformer(config.model)
    model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"])
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for source, target in NEW_DOMAIN:
            src = torch.tensor([tokenizers.src.encode(source) + [EOS_ID]])
            ids = tokenizers.tgt.encode(target)
            logits = model(src, torch.tensor([[BOS_ID, *ids]]))
            total += F.cross_entropy(logits[0], torch.tensor([*ids, EOS_ID]), reduction="sum")
            tokens += len(ids) + 1
    return float(total) / tokens


def train(argv: list[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """transformer-train in-process: its exit code and stderr."""
    capsys.readouterr()
    code = call_main(train_main, argv)
    return code, capsys.readouterr().err


def test_fine_tuning_lowers_the_loss_on_the_new_domain_and_leaves_the_parent_untouched(
    parent, tmp_path, capsys
):
    before = snapshot(parent)
    child = tmp_path / "child-run"
    argv = ["--config", child_config(tmp_path), "--init-from", parent, "--run-dir", child]
    code, err = train(argv, capsys)
    assert code == 0, err
    assert snapshot(parent) == before
    assert loss_on_new_domain(child) < loss_on_new_domain(parent) - 0.5


def test_fine_tuned_run_starts_from_the_parents_weights(parent, tmp_path, capsys):
    config = child_config(tmp_path, training={"max_steps": 1, "lr": 1e-12, "warmup_steps": 0})
    child = tmp_path / "child-run"
    argv = ["--config", config, "--init-from", parent, "--run-dir", child]
    assert train(argv, capsys)[0] == 0
    assert_weights_of(child, parent)


def test_fine_tuned_run_has_the_parents_tokenizer_and_model_and_records_its_parent(
    parent, tmp_path, capsys
):
    child = tmp_path / "child-run"
    config = child_config(tmp_path, training={"max_steps": 2}, model={"dropout": 0.3})
    code, err = train(["--config", config, "--init-from", parent, "--run-dir", child], capsys)
    assert code == 0, err
    tokenizer_files = sorted(p.name for p in (parent / "tokenizer").iterdir())
    assert sorted(p.name for p in (child / "tokenizer").iterdir()) == tokenizer_files
    for name in tokenizer_files:
        assert (child / "tokenizer" / name).read_bytes() == (
            parent / "tokenizer" / name
        ).read_bytes()
    saved, theirs = load_config(child / "config.yaml"), load_config(parent / "config.yaml")
    assert saved.tokenizer == theirs.tokenizer
    assert saved.model.dropout == 0.3  # dropout shapes no weight: the config's
    assert saved.model.d_model == theirs.model.d_model
    assert saved.model.src_vocab_size == theirs.model.src_vocab_size
    best = (parent / "checkpoints" / "best.pt").resolve()
    assert saved.training.init_from == str(best)
    log = (child / "train.log").read_text(encoding="utf-8")
    [line] = [line for line in log.splitlines() if "initialised from" in line]
    assert str(best) in line
    assert f"step {load_checkpoint(best)['step']}" in line
    assert "sha256 " in line


def test_a_checkpoint_file_names_its_run_and_that_checkpoint(parent, tmp_path, capsys):
    child = tmp_path / "child-run"
    last = parent / "checkpoints" / "last.pt"
    config = child_config(tmp_path, training={"max_steps": 1})
    assert train(["--config", config, "--init-from", last, "--run-dir", child], capsys)[0] == 0
    assert load_config(child / "config.yaml").training.init_from == str(last.resolve())


def test_resumed_fine_tuned_run_equals_an_uninterrupted_one_without_its_parent(
    parent, tmp_path, capsys
):
    copy = tmp_path / "parent-copy"  # moved away before the resume
    shutil.copytree(parent, copy)
    config = child_config(tmp_path, training={"max_steps": 10})
    straight, split = tmp_path / "straight", tmp_path / "split"
    argv = ["--config", config, "--init-from", copy, "--run-dir", straight]
    assert train(argv, capsys)[0] == 0
    argv = ["--config", config, "--init-from", copy, "--run-dir", split]
    assert train([*argv, "--set", "training.max_steps=4"], capsys)[0] == 0
    shutil.rmtree(copy)  # the run's own last.pt is its state: the parent is not read again
    code, err = train(["--run-dir", split, "--resume", "--set", "training.max_steps=10"], capsys)
    assert code == 0, err
    expected = load_checkpoint(straight / "checkpoints" / "last.pt")["model"]
    resumed = load_checkpoint(split / "checkpoints" / "last.pt")["model"]
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"model": {"d_model": 64}}, ["model.d_model: 32 (parent) -> 64 (config)", "remove"]),
        ({"tokenizer": {"vocab_size": 150}}, ["tokenizer.vocab_size: 200 (parent) -> 150"]),
    ],
    ids=["d_model", "vocab_size"],
)
def test_a_config_with_another_shape_or_vocabulary_is_refused_naming_the_keys(
    parent, tmp_path, capsys, changes, fragments
):
    before = snapshot(parent)
    child = tmp_path / "child-run"
    config = child_config(tmp_path, **changes)
    code, err = train(["--config", config, "--init-from", parent, "--run-dir", child], capsys)
    assert_one_line_error(code, err, *fragments)
    assert snapshot(parent) == before
    assert not child.exists()


def test_a_set_override_with_another_shape_is_refused(parent, tmp_path, capsys):
    child = tmp_path / "child-run"
    argv = ["--config", child_config(tmp_path), "--init-from", parent, "--run-dir", child]
    code, err = train([*argv, "--set", "model.num_heads=4"], capsys)
    assert_one_line_error(code, err, "model.num_heads: 2 (parent) -> 4 (config)")


def _not_a_run(tmp_path: Path, parent: Path) -> Path:
    (tmp_path / "folder").mkdir()
    return tmp_path / "folder"


def _without_checkpoint(tmp_path: Path, parent: Path) -> Path:
    run = tmp_path / "untrained"
    run.mkdir()
    shutil.copy(parent / "config.yaml", run / "config.yaml")
    shutil.copytree(parent / "tokenizer", run / "tokenizer")
    return run


def _damaged_checkpoint(tmp_path: Path, parent: Path) -> Path:
    run = tmp_path / "damaged"
    shutil.copytree(parent, run)
    best = run / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    return run


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (lambda tmp_path, parent: tmp_path / "missing", ["missing", "does not exist"]),
        (_not_a_run, ["folder", "not a run directory"]),
        (_without_checkpoint, ["untrained", "no checkpoint"]),
        (_damaged_checkpoint, ["best.pt", "corrupted or truncated"]),
    ],
    ids=["missing", "not-a-run", "no-checkpoint", "damaged"],
)
def test_a_parent_that_cannot_be_used_is_a_one_line_error(
    parent, tmp_path, capsys, make, fragments
):
    given = make(tmp_path, parent)
    child = tmp_path / "child-run"
    config = child_config(tmp_path)
    before = snapshot(given) if given.exists() else {}
    code, err = train(["--config", config, "--init-from", given, "--run-dir", child], capsys)
    assert_one_line_error(code, err, *fragments)
    assert (snapshot(given) if given.exists() else {}) == before
    assert not child.exists()


def test_init_from_with_resume_is_a_one_line_error(parent, tmp_path, capsys):
    child = tmp_path / "child-run"
    argv = ["--init-from", parent, "--run-dir", child, "--resume"]
    code, err = train(argv, capsys)
    assert_one_line_error(code, err, "--init-from", "--resume")
    assert not child.exists()


def test_the_parents_lock_is_not_taken(parent, tmp_path, capsys):
    """Reading a parent while it trains is fine: its train.lock is neither checked nor made."""
    lock = parent / "train.lock"
    lock.write_text("12345 elsewhere\n", encoding="utf-8")  # as if it were training
    try:
        child = tmp_path / "child-run"
        config = child_config(tmp_path, training={"max_steps": 1})
        code, err = train(["--config", config, "--init-from", parent, "--run-dir", child], capsys)
        assert code == 0, err
        assert lock.read_text(encoding="utf-8") == "12345 elsewhere\n"
    finally:
        lock.unlink()


def test_saved_config_of_a_fine_tuned_run_records_a_typed_parent(parent, tmp_path, capsys):
    child = tmp_path / "child-run"
    config = child_config(tmp_path, training={"max_steps": 1})
    assert train(["--config", config, "--init-from", parent, "--run-dir", child], capsys)[0] == 0
    saved = yaml.safe_load((child / "config.yaml").read_text(encoding="utf-8"))
    assert isinstance(saved["training"]["init_from"], str)
    assert yaml.safe_load((parent / "config.yaml").read_text())["training"]["init_from"] is None


def test_the_shipped_fine_tuning_config_fits_a_run_of_the_general_config():
    configs = Path(__file__).resolve().parents[1] / "configs"
    general = load_config(configs / "tatoeba_en_de_cpu.yaml")
    parent = dataclasses.replace(  # as its run saves it: the vocabulary sizes filled in
        general,
        model=dataclasses.replace(general.model, src_vocab_size=6000, tgt_vocab_size=6000),
    )
    path = configs / "multi30k_from_tatoeba.yaml"
    child = inherit_config(parent, load_config_values(path), str(path))
    assert child.model == parent.model and child.tokenizer == parent.tokenizer
    assert child.training.lr < general.training.lr
    assert child.training.warmup_steps < general.training.warmup_steps
    assert 0 < child.training.max_time_minutes < general.training.max_time_minutes


def assert_weights_of(run_dir: Path, parent: Path) -> None:
    """The run's last.pt holds the parent's best weights (within a negligible step)."""
    theirs = load_checkpoint(parent / "checkpoints" / "best.pt")["model"]
    mine = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    for name, tensor in theirs.items():
        torch.testing.assert_close(mine[name], tensor, rtol=0, atol=1e-9, msg=name)


def test_a_config_giving_training_init_from_fine_tunes_as_the_flag_does(parent, tmp_path, capsys):
    tiny = {"max_steps": 1, "lr": 1e-12, "warmup_steps": 0, "init_from": str(parent)}
    child = tmp_path / "child-run"
    code, err = train(
        ["--config", child_config(tmp_path, training=tiny), "--run-dir", child], capsys
    )
    assert code == 0, err
    assert_weights_of(child, parent)
    best = str((parent / "checkpoints" / "best.pt").resolve())
    assert load_config(child / "config.yaml").training.init_from == best


def test_a_fine_tuned_run_stopped_before_its_first_checkpoint_resumes_from_its_parent(
    parent, tmp_path, capsys
):
    tiny = {"max_steps": 1, "lr": 1e-12, "warmup_steps": 0}
    child = tmp_path / "child-run"
    argv = ["--config", child_config(tmp_path, training=tiny), "--init-from", parent]
    assert train([*argv, "--run-dir", child], capsys)[0] == 0
    tokenizer = snapshot(child / "tokenizer")
    shutil.rmtree(child / "checkpoints")  # as if stopped before it saved anything
    code, err = train(["--run-dir", child, "--resume"], capsys)
    assert code == 0, err
    assert_weights_of(child, parent)
    assert {p.name: b for p, (b, _) in snapshot(child / "tokenizer").items()} == {
        p.name: b for p, (b, _) in tokenizer.items()
    }
