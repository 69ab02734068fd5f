"""One home per fact (issue 21, item 8): each fact is defined once and asked for.

The special ids (transformer/data/special_ids.py), the decoding bounds (`DecodingConfig`),
the thread policy (`transformer.runtime.threads.plan_threads`), the loading of a translator
(`transformer.cli.decoding.load_translator`), the atomic replacement of a directory
(`transformer.files.StagedDirectory`), the longest decodable length
(`transformer.decoding.search.max_output_length`); and `--reference`, which decodes with the
paper's layers only.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from tiny_runs import make_tiny_run, tiny_model_config

import transformer.cli.decoding as decoding_cli
import transformer.cli.evaluate as evaluate_cli
import transformer.cli.explain as explain_cli
import transformer.cli.serve as serve_cli
import transformer.cli.train as train_cli
import transformer.cli.translate as translate_cli
from transformer.config import (
    Config,
    ConfigError,
    DecodingConfig,
    ModelConfig,
    config_changes,
    config_from_dict,
    config_to_dict,
    load_config,
)
from transformer.data.special_ids import PAD_ID, SpecialIds
from transformer.decoding.search import max_output_lengths
from transformer.decoding.translator import Translator
from transformer.files import TEMPORARY_NAME
from transformer.model import Transformer
from transformer.runtime.threads import Machine, ThreadPlan, plan_threads
from transformer.training.distributed import DistributedContext
from transformer.training.run import RunDirectory

CPU, GPU = torch.device("cpu"), torch.device("cuda")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("one_home") / "run")


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line a refused command wrote on stderr (log lines aside)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if " INFO " not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# --------------------------------------------------------------------------- 1. special ids


def test_the_padding_id_is_not_a_model_setting_but_the_tokenizers() -> None:
    assert "pad_id" not in {field.name for field in dataclasses.fields(ModelConfig)}
    model = Transformer(tiny_model_config())
    assert model.special_ids == SpecialIds()
    assert model.src_embed.embedding.padding_idx == PAD_ID
    assert model.tgt_embed.embedding.padding_idx == PAD_ID


def test_a_config_written_with_pad_id_0_by_older_code_still_loads_without_it() -> None:
    config = config_from_dict({"model": {"d_model": 32, "num_heads": 2, "pad_id": 0}})
    assert config.model.d_model == 32
    assert "pad_id" not in config_to_dict(config)["model"]


@pytest.mark.parametrize("value", ["5", "-1", "false", "'0'"])
def test_a_config_giving_another_pad_id_is_refused_naming_file_and_key(
    tmp_path: Path, value: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"model:\n  pad_id: {value}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == "model.pad_id"
    message = str(caught.value)
    assert message.startswith(f"{path}: model.pad_id: ") and "special_ids.py" in message
    assert "\n" not in message


def test_resuming_a_checkpoint_whose_config_holds_pad_id_0_sees_no_model_change() -> None:
    current = config_to_dict(Config(model=tiny_model_config()))["model"]
    saved = {**current, "pad_id": 0}  # what a checkpoint of older code holds
    assert config_changes(saved, current, "model") == []
    assert config_changes({**current, "pad_id": 3}, current, "model") != []


# --------------------------------------------------------------------------- 2. decoding bounds


def config_message(name: str, value: object) -> str:
    """What `DecodingConfig` says of `value` for the setting `name`."""
    with pytest.raises(ConfigError) as caught:
        DecodingConfig.check_setting(name, value)
    return caught.value.message


@pytest.mark.parametrize(
    ("command", "flag", "setting", "value"),
    [
        ("translate", "--beam-size", "beam_size", 0),
        ("translate", "--beam-size", "beam_size", 10**6),
        ("translate", "--nbest", "nbest", 0),
        ("translate", "--max-tokens", "batch_tokens", 0),
        ("translate", "--length-penalty", "length_penalty", math.nan),
        ("evaluate", "--beam-size", "beam_size", -1),
        ("evaluate", "--length-penalty", "length_penalty", 11.0),
        ("explain", "--beam-size", "beam_size", 0),
        ("explain", "--length-penalty", "length_penalty", -1.0),
    ],
)
def test_a_decoding_flag_out_of_bounds_gets_decoding_configs_message_under_its_name(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    flag: str,
    setting: str,
    value: object,
) -> None:
    main = {"translate": translate_cli, "evaluate": evaluate_cli, "explain": explain_cli}[command]
    missing = tmp_path / "no-run"  # the flag is refused before the run is read
    argv = ["--run", str(missing), flag, str(value)]
    argv += {
        "translate": ["--text", "hi"],
        "evaluate": ["--source", "s", "--reference", "r"],
        "explain": ["--text", "hi"],
    }[command]
    assert main.main(argv) == 2
    assert one_error_line(capsys) == f"error: {flag}: {config_message(setting, value)}"


@pytest.fixture(scope="module")
def client(run_dir: Path) -> Iterator[object]:
    pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[serve]'")
    from fastapi.testclient import TestClient

    from transformer.serve.app import create_app
    from transformer.serve.settings import ServeSettings

    translator = Translator.from_run(run_dir, device="cpu")
    app = create_app(translator, ServeSettings(max_beam_size=4))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("path", "field", "value", "setting"),
    [
        ("/translate", "beam_size", 0, "beam_size"),
        ("/explain", "beam_size", 0, "beam_size"),
        ("/translate", "nbest", 0, "nbest"),
        ("/translate", "length_penalty", -1.0, "length_penalty"),
        ("/explain", "length_penalty", 10.5, "length_penalty"),
    ],
)
def test_the_server_refuses_a_decoding_field_with_decoding_configs_message(
    client: object, path: str, field: str, value: object, setting: str
) -> None:
    response = client.post(path, json={"text": "how are you", field: value})  # type: ignore[attr-defined]
    assert response.status_code == 422, response.text
    assert response.json() == {
        "error": f"{field}: {config_message(setting, value)}",
        "field": field,
    }


def test_the_servers_own_beam_limit_is_a_service_setting_it_names(client: object) -> None:
    response = client.post("/translate", json={"text": "how are you", "beam_size": 5})  # type: ignore[attr-defined]
    assert response.status_code == 422
    assert response.json()["error"] == "beam_size: must be at most 4, this server's limit (got 5)"


# --------------------------------------------------------------------------- 3. threads

# kind, device, torch's threads, cores, cores busy elsewhere, OMP_NUM_THREADS set, --workers,
# processes -> threads, workers: the rules each command had before they moved into one home.
THREAD_CASES = [
    # translate (and evaluate): 2 workers by default on a CPU with 2+ threads, threads shared
    ("translate", CPU, 4, 4, None, False, None, 1, 2, 2),
    ("translate", CPU, 2, 2, None, False, None, 1, 1, 2),
    ("translate", CPU, 1, 1, None, False, None, 1, 1, 1),
    ("translate", CPU, 8, 8, None, True, 3, 1, 2, 3),
    ("translate", CPU, 2, 2, None, False, 4, 1, 1, 4),  # never fewer than one thread
    ("translate", CPU, 4, 4, None, False, 1, 1, 4, 1),  # explain: one worker, every thread
    ("translate", GPU, 4, 4, None, False, None, 1, 4, 1),
    ("translate", GPU, 4, 4, None, False, 2, 1, 4, 2),
    # serve: one core left to the HTTP server
    ("serve", CPU, 4, 4, None, False, 1, 1, 3, 1),
    ("serve", CPU, 8, 8, None, False, 2, 1, 3, 2),
    ("serve", CPU, 2, 2, None, False, 1, 1, 1, 1),
    ("serve", CPU, 1, 1, None, False, 1, 1, 1, 1),
    ("serve", CPU, 4, 4, None, False, None, 1, 3, 1),
    ("serve", GPU, 4, 4, None, False, 2, 1, 4, 2),
    # train: one thread per core other programs leave free, unless the user or torchrun chose
    ("train", CPU, 2, 2, 0.0, False, None, 1, 2, 1),
    ("train", CPU, 2, 2, 1.0, False, None, 1, 1, 1),
    ("train", CPU, 8, 8, 3.2, False, None, 1, 5, 1),
    ("train", CPU, 4, 8, 0.0, False, None, 1, 4, 1),
    ("train", CPU, 2, 2, 1.0, True, None, 1, 2, 1),
    ("train", CPU, 2, 2, None, False, None, 1, 2, 1),  # no /proc/stat: keep torch's
    ("train", CPU, 4, 4, 2.0, False, None, 2, 4, 1),  # a distributed run
    ("train", GPU, 4, 4, 3.0, False, None, 1, 4, 1),
]


@pytest.mark.parametrize(
    ("kind", "device", "threads", "cores", "busy", "chosen", "workers", "processes", "want",
     "want_workers"),
    THREAD_CASES,
)  # fmt: skip
def test_the_thread_plan_of_each_command_keeps_its_rule(
    kind: str,
    device: torch.device,
    threads: int,
    cores: int,
    busy: float | None,
    chosen: bool,
    workers: int | None,
    processes: int,
    want: int,
    want_workers: int,
) -> None:
    machine = Machine(threads, cores, chosen, busy)
    plan = plan_threads(kind, device, machine, workers, processes)  # type: ignore[arg-type]
    assert plan == ThreadPlan(want, want_workers)


class PlannedError(Exception):
    """Raised by the spy on `plan_threads`: the command went no further."""


@pytest.fixture
def planned(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int | None]]:
    """Every call of `plan_threads`, as (kind, workers); each call stops the command."""
    calls: list[tuple[str, int | None]] = []

    def spy(kind: str, device: torch.device, machine: Machine, workers: int | None = None,
            processes: int = 1) -> ThreadPlan:  # fmt: skip
        calls.append((kind, workers))
        raise PlannedError

    monkeypatch.setattr("transformer.runtime.threads.plan_threads", spy)
    return calls


def test_every_cli_takes_its_thread_count_from_plan_threads(
    run_dir: Path, tmp_path: Path, planned: list[tuple[str, int | None]]
) -> None:
    source = tmp_path / "source.txt"
    source.write_text("how are you\n", encoding="utf-8")
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "data:\n  train: {src_path: a.txt, tgt_path: b.txt}\ntraining: {device: cpu}\n",
        encoding="utf-8",
    )
    commands: list[tuple[Callable[[list[str]], int], list[str]]] = [
        (translate_cli.main, ["--run", str(run_dir), "--text", "hi", "--device", "cpu"]),
        (translate_cli.main, ["--run", str(run_dir), "--text", "hi", "--workers", "3"]),
        (evaluate_cli.main, ["--run", str(run_dir), "--source", str(source), "--reference",
                             str(source), "--device", "cpu"]),
        (explain_cli.main, ["--run", str(run_dir), "--text", "hi", "--output",
                            str(tmp_path / "explained"), "--device", "cpu"]),
        (train_cli.main, ["--config", str(config), "--run-dir", str(tmp_path / "new-run")]),
    ]  # fmt: skip
    pytest.importorskip("uvicorn", reason="the serve extra: pip install -e '.[serve]'")
    commands.append((serve_cli.main, ["--run", str(run_dir), "--port", "0", "--workers", "2"]))
    for main, argv in commands:
        with pytest.raises(PlannedError):
            main(argv)
    assert planned == [
        ("translate", None),
        ("translate", 3),
        ("translate", None),
        ("translate", 1),  # explain: one sentence, one worker
        ("train", None),
        ("serve", 2),
    ]
    assert not (tmp_path / "new-run").exists()  # the training stopped before its directory


# --------------------------------------------------------------------------- 4. load_translator


def test_every_command_that_decodes_loads_its_translator_with_the_one_load_translator() -> None:
    for module in (translate_cli, evaluate_cli, explain_cli, serve_cli):
        assert module.load_translator is decoding_cli.load_translator, module.__name__


# --------------------------------------------------------------------------- 5. directory swap


def test_a_new_runs_tokenizer_is_staged_and_put_in_place_by_the_files_mechanism(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    with RunDirectory(run, DistributedContext(), new_tokenizer=True) as directory:
        assert directory.staging is not None
        assert TEMPORARY_NAME.match(directory.staging.name), directory.staging
        assert directory.staging.parent == run and directory.staging.is_dir()
        assert not (run / "tokenizer").exists()  # nothing of the run before the commit
        (directory.staging / "spm.model").write_bytes(b"new")
        directory.commit(Config())
    assert sorted(os.listdir(run)) == ["config.yaml", "tokenizer"]  # no temporaries left
    assert os.listdir(run / "tokenizer") == ["spm.model"]


def test_a_resumed_run_stages_nothing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "tokenizer").mkdir(parents=True)
    (run / "tokenizer" / "spm.model").write_bytes(b"old")
    with RunDirectory(run, DistributedContext(), new_tokenizer=False) as directory:
        assert directory.staging is None
        directory.commit(Config())
    assert (run / "tokenizer" / "spm.model").read_bytes() == b"old"


KILLED_SETUP = """
import os, signal, sys
from pathlib import Path
from transformer.training.distributed import DistributedContext
from transformer.training.run import RunDirectory
directory = RunDirectory(Path(sys.argv[1]), DistributedContext(), new_tokenizer=True).__enter__()
(directory.staging / "src.model").write_bytes(b"half of a tokenizer")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_what_a_killed_setup_staged_never_reaches_the_next_runs_tokenizer(tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", KILLED_SETUP, str(run)], env=env, timeout=120)
    assert result.returncode == -signal.SIGKILL
    assert any(TEMPORARY_NAME.match(name) for name in os.listdir(run))  # what the kill left
    with RunDirectory(run, DistributedContext(), new_tokenizer=True) as directory:
        assert directory.staging is not None
        assert [name for name in os.listdir(run) if TEMPORARY_NAME.match(name)] == [
            directory.staging.name
        ]
        (directory.staging / "spm.model").write_bytes(b"new")
        directory.commit(Config())
    assert os.listdir(run / "tokenizer") == ["spm.model"]


# --------------------------------------------------------------------------- 6. longest output


@pytest.mark.parametrize("positions", ["sinusoidal", "learned", "rope"])
def test_the_export_holds_every_position_the_search_can_write_for_any_source(
    tmp_path: Path, positions: str
) -> None:
    from transformer.export.directory import target_positions

    run = make_tiny_run(tmp_path / "run", positional_encoding=positions, max_positions=16)
    translator = Translator.from_run(run, device="cpu")
    for max_len_a, max_len_b in [(1.0, 3), (2.0, 7), (0.0, 40)]:
        decoding = DecodingConfig(max_len_a=max_len_a, max_len_b=max_len_b)
        translator.config = dataclasses.replace(translator.config, decoding=decoding)
        table = target_positions(translator)
        cap = translator.model.max_target_positions
        sources = range(1, translator.max_source_tokens + 2)  # every length, EOS included
        longest = max(
            max_output_lengths(torch.ones(1, n, dtype=torch.long), max_len_a, max_len_b, 0, cap)
            for n in sources
        )[0]
        if positions == "rope":
            assert table is None
        else:
            assert table == max(16, longest)
        if positions == "learned":
            assert table == cap == 16


# --------------------------------------------------------------------------- 7. --reference


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The `fast` argument of every model a translator built."""
    import transformer.decoding.translator as translator_module

    calls: list[bool] = []
    real = translator_module.build_model

    def spy(config: ModelConfig, fast: bool = True) -> Transformer:
        calls.append(fast)
        return real(config, fast)

    monkeypatch.setattr(translator_module, "build_model", spy)
    return calls


@pytest.mark.parametrize("beam_size", ["1", "2"])
def test_translations_with_and_without_reference_are_the_same(
    run_dir: Path, capsys: pytest.CaptureFixture[str], built: list[bool], beam_size: str
) -> None:
    lines = ["how are you", "the weather is nice today and the house is big", "good night"]
    argv = ["--run", str(run_dir), "--device", "cpu", "--workers", "1", "--scores"]
    argv += ["--beam-size", beam_size]
    for line in lines:
        argv += ["--text", line]
    outputs = []
    for reference in ([], ["--reference"]):
        assert translate_cli.main([*argv, *reference]) == 0
        outputs.append([line.split("\t") for line in capsys.readouterr().out.splitlines()])
    assert built == [True, False]
    fast, plain = outputs
    assert [text for text, _ in fast] == [text for text, _ in plain]
    assert [float(s) for _, s in fast] == pytest.approx([float(s) for _, s in plain], abs=2e-4)


def test_explain_with_reference_builds_the_papers_layers(
    run_dir: Path, tmp_path: Path, built: list[bool]
) -> None:
    argv = ["--run", str(run_dir), "--text", "how are you", "--quiet", "--device", "cpu"]
    argv += ["--output", str(tmp_path / "explained"), "--reference"]
    assert explain_cli.main(argv) == 0
    assert built == [False]


@pytest.mark.parametrize(
    ("command", "flag", "argv"),
    [
        (translate_cli, "--reference", ["--text", "hi"]),
        (translate_cli, "--reference-layers", ["--text", "hi"]),
        (evaluate_cli, "--reference-layers", ["--source", "s", "--reference", "r"]),
    ],
)
def test_reference_with_the_ctranslate2_engine_is_refused_in_one_line(
    run_dir: Path, capsys: pytest.CaptureFixture[str], command: object, flag: str, argv: list[str]
) -> None:
    argv = ["--run", str(run_dir), "--engine", "ctranslate2", flag, *argv]
    assert command.main(argv) == 2  # type: ignore[attr-defined]
    line = one_error_line(capsys)
    assert "--engine pytorch" in line
    assert line.startswith(
        "error: --reference-layers" if command is evaluate_cli else "error: --reference "
    )


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        (translate_cli, "--reference, --reference-layers"),
        (evaluate_cli, "--reference-layers"),  # its --reference FILE: the reference translations
        (explain_cli, "--reference, --reference-layers"),
        (serve_cli, "--reference, --reference-layers"),
    ],
)
def test_every_decoding_commands_help_documents_reference_in_one_phrase(
    command: object, flags: str
) -> None:
    text = " ".join(command.build_parser().format_help().split())  # type: ignore[attr-defined]
    assert f"{flags} {decoding_cli.REFERENCE_HELP}" in text
