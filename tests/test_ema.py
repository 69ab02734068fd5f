"""The exponential moving average of the weights (training.ema_decay): its arithmetic, what
checkpoints hold with it, exact resumption, and the commands that read its checkpoints."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from tiny_runs import (
    PAIRS,
    call_main,
    error_line,
    pairs_config,
    tiny_model,
)
from torch import nn

from transformer.cli.train import main as train_main
from transformer.config import load_config
from transformer.data.corpus import encode_corpus, load_corpus
from transformer.data.tokenizer import load_tokenizers
from transformer.decoding.translator import Translator
from transformer.model import Transformer
from transformer.training.checkpoint import load_checkpoint
from transformer.training.ema import WeightAverage, warmed_up_decay
from transformer.training.validation import Validator

PLAIN_KEYS = {"model", "config", "step", "optimizer", "scaler", "schedule", "progress", "rng"}


# --------------------------------------------------------------------------- the arithmetic


class WithBuffer(nn.Module):
    """One parameter and one floating buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(3))
        self.register_buffer("running", torch.zeros(3))


def test_the_warm_up_decay_is_min_of_decay_and_1_plus_n_over_10_plus_n() -> None:
    assert warmed_up_decay(0.999, 0) == pytest.approx(0.1)
    assert warmed_up_decay(0.999, 90) == pytest.approx(0.91)
    assert warmed_up_decay(0.9, 90) == 0.9
    assert warmed_up_decay(0.999, 10**6) == 0.999


def test_the_average_follows_the_formula_on_a_known_sequence_and_buffers_are_copied() -> None:
    model = WithBuffer()
    decay = 0.5
    average = WeightAverage(model, decay)
    expected = torch.zeros(3)
    for n, value in enumerate([4.0, -2.0, 8.0, 1.0, 3.0]):
        with torch.no_grad():
            model.weight.fill_(value)
            model.running.fill_(10 * value)
        average.update(model)
        d = min(decay, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * value
        state = average.state_dict()
        torch.testing.assert_close(state["weight"], expected)
        assert torch.equal(state["running"], model.running)  # copied, not averaged
    assert average.updates == 5


def test_the_average_of_constant_weights_is_those_weights() -> None:
    model = tiny_model(seed=3)
    average = WeightAverage(model, 0.99)
    for _ in range(4):
        average.update(model)
    for key, tensor in model.state_dict().items():
        torch.testing.assert_close(average.state_dict()[key], tensor)


def test_tied_weights_share_one_average_and_its_state_loads_into_the_model() -> None:
    model = tiny_model(seed=0, share_embeddings=True)
    state = model.state_dict()
    tied = [k for k in state for j in state if k < j and state[k].data_ptr() == state[j].data_ptr()]
    assert tied, "the tiny model ties its embeddings"
    average = WeightAverage(model, 0.9).state_dict()
    assert list(average) == list(state)
    for key in state:
        for other in state:
            same = state[key].data_ptr() == state[other].data_ptr()
            assert (average[key].data_ptr() == average[other].data_ptr()) == same
    tiny_model(seed=1, share_embeddings=True).load_state_dict(average)


def test_applied_gives_the_model_the_average_and_then_its_own_weights_back() -> None:
    model = tiny_model(seed=0)
    average = WeightAverage(model, 0.9)
    own = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    trained = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    with average.applied(model):
        for key, tensor in model.state_dict().items():
            assert torch.equal(tensor, own[key]), key
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, trained[key]), key


# --------------------------------------------------------------------------- in training


def write_config(directory: Path, **training: object) -> Path:
    """A tiny run on `PAIRS` with a few batches per epoch, validating every 4 steps."""
    settings = {
        "max_steps": 16,
        "batch_tokens": 60,
        "eval_every": 4,
        "keep_best": 4,
        "ema_decay": 0.9,
        **training,
    }
    return pairs_config(
        directory,
        model={"dropout": 0.1},
        training=settings,
    )


def train(config: Path, run_dir: Path, *sets: str) -> Path:
    args = ["--config", config, "--run-dir", run_dir, *(["--set", *sets] if sets else [])]
    assert call_main(train_main, args) == 0
    return run_dir


def checkpoint(run_dir: Path, name: str = "last.pt") -> dict:
    return load_checkpoint(run_dir / "checkpoints" / name)


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained with training.ema_decay 0.9 (validations at steps 4, 8, 12, 16)."""
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("ema")
    return train(write_config(directory), directory / "run")


def test_checkpoints_offer_the_average_as_model_and_keep_the_trained_weights(ema_run) -> None:
    last = checkpoint(ema_run)
    assert set(last) >= PLAIN_KEYS | {"raw_model", "ema"}
    assert last["ema"] == {"decay": 0.9, "updates": last["step"]}
    assert last["model"].keys() == last["raw_model"].keys()
    assert any(not torch.equal(last["model"][k], last["raw_model"][k]) for k in last["model"])


def test_validation_measures_the_ema_weights_that_best_pt_holds(ema_run) -> None:
    best = checkpoint(ema_run, "best.pt")
    config = load_config(ema_run / "config.yaml")
    lines = (ema_run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    measured = {entry["step"]: entry["valid_loss"] for entry in map(json.loads, lines)}
    tokenizers = load_tokenizers(ema_run / "tokenizer")
    valid = encode_corpus(
        load_corpus(config.data.valid, "data.valid"), tokenizers, 128, 3.0, filter=False
    )

    def loss_of(weights: dict) -> float:
        model = Transformer(config.model)
        model.load_state_dict(weights)
        validator = Validator(
            model,
            valid,
            tokenizers,
            config.training,
            config.decoding,
            torch.device("cpu"),
            contextlib.nullcontext,
        )
        result = validator.validate(lambda: False)
        assert result is not None
        return result.loss

    assert loss_of(best["model"]) == pytest.approx(measured[best["step"]], rel=1e-5)
    assert loss_of(best["raw_model"]) != pytest.approx(measured[best["step"]], rel=1e-5)


def test_ema_decay_0_trains_and_saves_exactly_as_without_the_setting(tmp_path) -> None:
    config = write_config(tmp_path, ema_decay=0.0, max_steps=6)
    values = yaml.safe_load(config.read_text(encoding="utf-8"))
    del values["training"]["ema_decay"]
    without = tmp_path / "without.yaml"
    without.write_text(yaml.safe_dump(values), encoding="utf-8")
    off, absent = train(config, tmp_path / "off"), train(without, tmp_path / "absent")
    for name in ("last.pt", "best.pt"):
        state, plain = checkpoint(off, name), checkpoint(absent, name)
        assert set(state) == set(plain) and set(state) - {"metrics"} == PLAIN_KEYS
        for key, tensor in plain["model"].items():
            assert torch.equal(state["model"][key], tensor), key


@pytest.mark.usefixtures("single_thread")
def test_the_average_leaves_training_alone_the_raw_weights_are_those_of_a_run_without_it(
    tmp_path,
) -> None:
    """What makes one EMA run measure two recipes (docs/results.md): its trained weights,
    step for step, are the run without the EMA's, and so are its optimizer and random state."""
    plain = train(write_config(tmp_path, ema_decay=0.0, max_steps=9), tmp_path / "plain")
    averaged = train(write_config(tmp_path, max_steps=9), tmp_path / "averaged")
    for name in ("step_00000004.pt", "step_00000008.pt", "last.pt"):
        without, with_ema = checkpoint(plain, name), checkpoint(averaged, name)
        for key, tensor in without["model"].items():
            assert torch.equal(with_ema["raw_model"][key], tensor), (name, key)
        assert with_ema["step"] == without["step"]
        assert torch.equal(with_ema["rng"]["torch"], without["rng"]["torch"])


@pytest.mark.usefixtures("single_thread")
def test_a_resumed_ema_run_ends_with_the_weights_and_average_of_an_uninterrupted_run(tmp_path):
    config = write_config(tmp_path, max_steps=14, eval_every=5)
    straight = train(config, tmp_path / "straight")
    split = train(config, tmp_path / "split", "training.max_steps=7")
    assert checkpoint(split)["ema"]["updates"] == 7
    resumed = ["--run-dir", split, "--resume", "--set", "training.max_steps=14"]
    assert call_main(train_main, resumed) == 0
    expected, got = checkpoint(straight), checkpoint(split)
    assert got["ema"] == expected["ema"]
    for weights in ("model", "raw_model"):
        for key, tensor in expected[weights].items():
            assert torch.equal(tensor, got[weights][key]), (weights, key)


def test_resuming_with_the_ema_turned_on_starts_it_from_the_trained_weights(tmp_path) -> None:
    config = write_config(tmp_path, ema_decay=0.0, max_steps=4)
    run = train(config, tmp_path / "run")
    before = checkpoint(run)["model"]
    args = ["--run-dir", run, "--resume", "--set", "training.max_steps=5", "training.ema_decay=0.9"]
    assert call_main(train_main, args) == 0
    after = checkpoint(run)
    assert after["ema"]["updates"] == 1
    for key, tensor in after["model"].items():  # 0.1 · before + 0.9 · after one step
        expected = 0.1 * before[key] + 0.9 * after["raw_model"][key]
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, expected)


def test_transformer_average_averages_the_ema_weights_of_an_ema_run(ema_run, cli) -> None:
    output = ema_run.parent / "averaged.pt"
    result = cli("average", "--run", ema_run, "--last", "2", "--output", output)
    assert result.returncode == 0, result.stderr
    steps = sorted((ema_run / "checkpoints").glob("step_*.pt"))[-2:]
    models = [load_checkpoint(path)["model"] for path in steps]
    averaged = load_checkpoint(output)["model"]
    for key, tensor in averaged.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, (models[0][key] + models[1][key]) / 2)


def test_transformer_translate_translates_with_the_ema_weights(ema_run, cli) -> None:
    sources = [source for source, _ in PAIRS[:4]]
    result = cli("translate", "--run", ema_run, *[f"--text={s}" for s in sources])
    assert result.returncode == 0, result.stderr
    config = load_config(ema_run / "config.yaml")
    model = Transformer(config.model)
    model.load_state_dict(checkpoint(ema_run, "best.pt")["model"])
    translator = Translator(
        model, load_tokenizers(ema_run / "tokenizer"), config, torch.device("cpu")
    )
    expected = [hypotheses[0].text for hypotheses in translator.translate(sources)]
    assert result.stdout.splitlines() == expected


@pytest.mark.parametrize("value", ["1.0", "-0.1", "1.5", "nan"])
def test_an_ema_decay_outside_0_to_1_is_a_one_line_error(tmp_path, cli, value: str) -> None:
    config = write_config(tmp_path)
    args = ["--set", f"training.ema_decay={value}"]
    result = cli("train", "--config", config, "--run-dir", tmp_path / "run", *args)
    error_line(result, "training.ema_decay")
    assert not (tmp_path / "run").exists()
