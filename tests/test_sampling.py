"""Subword regularization (tokenizer.sampling): what the sampled segmentations are, that
they depend on (seed, epoch) only, that only training sees them, and that resuming is exact."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tiny_runs import (
    DATA,
    ENV,
    call_main,
    error_line,
    pairs_config,
)

from transformer.cli.train import main as train_main
from transformer.config import (
    CorpusConfig,
    SamplingConfig,
    TokenizerConfig,
    load_config,
)
from transformer.data import samplers as samplers_module
from transformer.data.corpus import EncodedCorpus, encode_corpus, load_corpus
from transformer.data.samplers import SubwordSampler, sample_texts
from transformer.data.sampling import SampledEpochs, sample_epoch, warm_sampler
from transformer.data.tokenizer import TokenizerPair, train_tokenizers
from transformer.errors import UserError
from transformer.training.checkpoint import load_checkpoint
from transformer.training.distributed import DistributedContext
from transformer.training.run import build_model, prepare_data, resolve_model_config
from transformer.training.trainer import Trainer

SENTENCES = 400  # of the shipped corpus: enough for statistics, quick to encode
MAX_LENGTH = 128


@dataclasses.dataclass
class Setup:
    config: TokenizerConfig
    tokenizers: TokenizerPair
    best: EncodedCorpus


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """Tokenizers of one kind trained on part of the shipped corpus, and its best encoding."""
    kind = request.param
    directory = tmp_path_factory.mktemp(kind)
    for side in ("en", "de"):
        lines = (DATA / f"train.{side}").read_text(encoding="utf-8").splitlines()[:SENTENCES]
        (directory / f"train.{side}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    corpus = CorpusConfig(
        src_path=str(directory / "train.en"), tgt_path=str(directory / "train.de")
    )
    dataset = load_corpus(corpus, "data.train")
    alpha = 0.1 if kind == "unigram" else 0.2
    config = TokenizerConfig(kind=kind, vocab_size=300, sampling=SamplingConfig(alpha=alpha))
    tokenizers = train_tokenizers(
        config, list(dataset["src"]), list(dataset["tgt"]), directory / "tokenizer"
    )
    return Setup(config, tokenizers, encode_corpus(dataset, tokenizers, MAX_LENGTH, 3.0))


def sampled(setup: Setup, epoch: int, seed: int = 1, **changes: object) -> EncodedCorpus:
    config = setup.config
    if changes:
        sampling = dataclasses.replace(config.sampling, **changes)
        config = dataclasses.replace(config, sampling=sampling)
    return sample_epoch(setup.best, setup.tokenizers, config, seed, epoch, MAX_LENGTH)


def ids(corpus: EncodedCorpus, side: str = "src") -> list[list[int]]:
    return [getattr(corpus[i], side).tolist() for i in range(len(corpus))]


# --------------------------------------------------------------------------- the segmentations


def test_sampling_segments_the_same_sentences_differently_in_each_epoch(setup: Setup) -> None:
    first, second = sampled(setup, 0), sampled(setup, 1)
    for side in ("src", "tgt"):
        changed = sum(a != b for a, b in zip(ids(first, side), ids(second, side), strict=True))
        assert changed > len(first) // 2, (side, changed)


def test_sampled_segmentations_have_more_pieces_on_average(setup: Setup) -> None:
    best = setup.best
    for epoch in range(3):
        corpus = sampled(setup, epoch)
        assert corpus.src_lengths.mean() > best.src_lengths.mean()
        assert corpus.tgt_lengths.mean() > best.tgt_lengths.mean()


def test_sampled_pieces_decode_to_the_sentence(setup: Setup) -> None:
    corpus = sampled(setup, 0)
    assert len(corpus) == len(setup.best)
    for i in range(len(corpus)):
        assert setup.tokenizers.src.decode(corpus[i].src) == corpus.src_texts[i]
        assert setup.tokenizers.tgt.decode(corpus[i].tgt) == corpus.tgt_texts[i]
        assert corpus[i].src[-1] == corpus[i].tgt[-1] == 3  # EOS ends every side


def test_the_same_seed_and_epoch_give_the_same_segmentation(setup: Setup) -> None:
    again = sampled(setup, 2)
    sampled(setup, 5, seed=9)  # other draws in between change nothing
    assert ids(sampled(setup, 2)) == ids(again)
    assert ids(sampled(setup, 2), "tgt") == ids(again, "tgt")
    assert ids(sampled(setup, 2, seed=2)) != ids(again)


@pytest.mark.parametrize("cache", [20, samplers_module.TABLE_CACHE])
def test_a_warm_sampler_draws_what_a_new_one_draws(setup: Setup, monkeypatch, cache: int):
    """Workers keep their sampler from chunk to chunk (`warm_sampler`); what it has cached,
    full (20 words) or not, must not change a draw."""
    monkeypatch.setattr(samplers_module, "TABLE_CACHE", cache)
    sampling, proto = setup.config.sampling, setup.tokenizers.src.model_proto
    texts = list(setup.best.src_texts)

    def sampler() -> SubwordSampler:
        return SubwordSampler(proto, setup.config.kind, sampling.alpha, sampling.nbest_size)

    warm = sampler()
    sample_texts(warm, texts[100:], 7, MAX_LENGTH)  # other words and draws first
    for seed in (1, 2):
        fresh = sample_texts(sampler(), texts[:100], seed, MAX_LENGTH)
        again = sample_texts(warm, texts[:100], seed, MAX_LENGTH)
        assert all(np.array_equal(a, b) for a, b in zip(fresh, again, strict=True))
    assert len(warm._tables) <= cache
    if setup.config.kind == "unigram":
        assert len(warm._tables) == cache if cache == 20 else len(warm._tables) > 20
    worker = warm_sampler(proto, setup.config.kind, sampling.alpha, sampling.nbest_size)
    assert warm_sampler(proto, setup.config.kind, sampling.alpha, sampling.nbest_size) is worker


def test_a_segmentation_is_the_same_in_another_process(setup: Setup, tmp_path: Path) -> None:
    texts = list(setup.best.src_texts)[:100]
    (tmp_path / "texts.json").write_text(json.dumps(texts), encoding="utf-8")
    sampling = setup.config.sampling
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from transformer.data.samplers import SubwordSampler, sample_texts\n"
        f"proto = Path({str(setup.tokenizers.src.path)!r}).read_bytes()\n"
        f"texts = json.loads(Path({str(tmp_path / 'texts.json')!r}).read_text())\n"
        f"sampler = SubwordSampler(proto, {setup.config.kind!r}, {sampling.alpha}, "
        f"{sampling.nbest_size})\n"
        "tokens, lengths = sample_texts(sampler, texts, 7, 128)\n"
        "print(json.dumps([tokens.tolist(), lengths.tolist()]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=ENV, capture_output=True, text=True, check=True
    )
    sampler = SubwordSampler(
        setup.tokenizers.src.model_proto, setup.config.kind, sampling.alpha, sampling.nbest_size
    )
    tokens, lengths = sample_texts(sampler, texts, 7, 128)
    assert json.loads(done.stdout) == [tokens.tolist(), lengths.tolist()]
    assert tokens.tolist() != [i for text in texts for i in setup.tokenizers.src.encode(text)]


def test_a_large_alpha_or_no_dropout_gives_sentencepieces_best_segmentation(setup: Setup) -> None:
    # the lattice with alpha -> infinity is Viterbi's; BPE without dropout is plain BPE
    alpha = 1000.0 if setup.config.kind == "unigram" else 1e-12
    texts = list(setup.best.src_texts)
    sampler = SubwordSampler(setup.tokenizers.src.model_proto, setup.config.kind, alpha, -1)
    rng = random.Random(0)
    assert [sampler.sample(t, rng) for t in texts] == setup.tokenizers.src.encode_batch(texts)


def test_the_least_random_setting_gives_the_best_segmentation(setup: Setup) -> None:
    # unigram: one candidate (nbest_size 1); BPE-dropout: (almost) no merge dropped
    least = {"nbest_size": 1} if setup.config.kind == "unigram" else {"alpha": 1e-9}
    corpus = sampled(setup, 0, **least)
    assert ids(corpus) == ids(setup.best)
    assert ids(corpus, "tgt") == ids(setup.best, "tgt")


def test_no_sampled_side_is_longer_than_max_length(setup: Setup) -> None:
    # every best segmentation fits, many sampled ones would not
    limit = int(max(setup.best.src_lengths.max(), setup.best.tgt_lengths.max()))
    config = dataclasses.replace(setup.config, sampling=SamplingConfig(alpha=0.9))
    corpus = sample_epoch(setup.best, setup.tokenizers, config, 1, 0, limit)
    assert corpus.src_lengths.max() <= limit and corpus.tgt_lengths.max() <= limit
    assert corpus.src_lengths.mean() > setup.best.src_lengths.mean()


def test_the_epoch_sampled_ahead_equals_the_epoch_sampled_on_demand(setup: Setup) -> None:
    epochs = SampledEpochs(setup.best, setup.tokenizers, setup.config, 1, MAX_LENGTH)
    try:
        assert ids(epochs.corpus(0)) == ids(sampled(setup, 0))
        assert ids(epochs.corpus(1), "tgt") == ids(sampled(setup, 1), "tgt")  # begun ahead
        assert ids(epochs.corpus(4)) == ids(sampled(setup, 4))  # skipped to: sampled now
    finally:
        epochs.close()


def test_sampling_leaves_the_best_encoding_and_translation_input_unchanged(setup: Setup) -> None:
    texts = list(setup.best.src_texts)[:50]
    before = [setup.tokenizers.src.encode(text) for text in texts]
    batch = setup.tokenizers.src.encode_batch(texts)
    best = ids(setup.best)
    sampled(setup, 0)
    assert [setup.tokenizers.src.encode(text) for text in texts] == before == batch
    assert ids(setup.best) == best


# --------------------------------------------------------------------------- in training


def write_config(directory: Path, **training: object) -> Path:
    """A tiny run on `PAIRS` that samples segmentations; a few batches per epoch."""
    settings = {"max_steps": 24, "batch_tokens": 40, **training}
    return pairs_config(
        directory,
        model={"dropout": 0.1},
        tokenizer={"sampling": {"alpha": 0.2}},
        training=settings,
        decoding={"beam_size": 1},
    )


@pytest.mark.usefixtures("single_thread")
def test_a_resumed_sampled_run_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    config = write_config(tmp_path)
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert call_main(train_main, ["--config", config, "--run-dir", straight]) == 0
    first = ["--config", config, "--run-dir", split, "--set", "training.max_steps=12"]
    assert call_main(train_main, first) == 0
    progress = load_checkpoint(split / "checkpoints" / "last.pt")["progress"]
    assert progress["epoch"] >= 1 and progress["next_batch"] > 0  # stopped within an epoch
    resumed = ["--run-dir", split, "--resume", "--set", "training.max_steps=24"]
    assert call_main(train_main, resumed) == 0
    expected = load_checkpoint(straight / "checkpoints" / "last.pt")
    got = load_checkpoint(split / "checkpoints" / "last.pt")
    assert expected["progress"]["epoch"] > progress["epoch"]  # crossed an epoch boundary
    for name, tensor in expected["model"].items():
        assert torch.equal(tensor, got["model"][name]), name


@pytest.mark.usefixtures("single_thread")
def test_a_sampled_run_trains_on_sampled_pairs_and_validates_on_the_best(tmp_path):
    config = load_config(write_config(tmp_path, max_steps=3))
    data = prepare_data(config, tmp_path / "run", DistributedContext(), resume=False)
    config = resolve_model_config(config, data.tokenizers)
    best_train, best_valid = ids(data.train), ids(data.valid)
    model = build_model(config, config.training.seed, torch.device("cpu"))
    trainer = Trainer(
        config,
        model,
        data.tokenizers,
        data.train,
        data.valid,
        tmp_path / "run",
        torch.device("cpu"),
    )
    trainer.train()
    assert ids(trainer.train_data) != best_train  # the epoch trained on a sampled segmentation
    assert trainer.validator is not None and ids(trainer.validator.data) == best_valid
    assert ids(data.valid) == best_valid


@pytest.mark.usefixtures("single_thread")
def test_the_tokenized_data_cache_holds_only_best_segmentations(tmp_path):
    config = write_config(tmp_path / "sampled", max_steps=8)
    assert call_main(train_main, ["--config", config, "--run-dir", tmp_path / "run"]) == 0
    cached = sorted((tmp_path / "sampled" / "cache").glob("*.npz"))
    assert len(cached) == 2  # the training and the validation corpus
    values = yaml.safe_load(config.read_text(encoding="utf-8"))
    values["tokenizer"]["sampling"] = None
    values["data"]["cache_dir"] = str(tmp_path / "best-cache")
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(values), encoding="utf-8")
    # the same tokenizer (trained from the same text and settings) and the best encodings
    assert call_main(train_main, ["--config", plain, "--run-dir", tmp_path / "plain"]) == 0
    best = sorted((tmp_path / "best-cache").glob("*.npz"))
    assert [p.name for p in best] == [p.name for p in cached]
    for one, other in zip(cached, best, strict=True):
        with np.load(one) as a, np.load(other) as b:
            assert a.files == b.files
            assert all(np.array_equal(a[name], b[name]) for name in a.files)


# --------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    ("sampling", "fragment"),
    [
        ("tokenizer.sampling.alpha=0", "tokenizer.sampling.alpha: must be > 0"),
        ("tokenizer.sampling.nbest_size=0", "tokenizer.sampling.nbest_size: must be -1"),
        ("tokenizer.sampling.nbest_size=-2", "tokenizer.sampling.nbest_size: must be -1"),
        ("tokenizer.sampling.alpah=0.1", "did you mean 'alpha'"),
        ("tokenizer.sampling=3", "tokenizer.sampling: expected a mapping or null"),
    ],
)
def test_a_bad_sampling_setting_is_a_one_line_error_naming_the_key(
    tmp_path, cli, sampling: str, fragment: str
) -> None:
    config = write_config(tmp_path)
    result = cli("train", "--config", config, "--run-dir", tmp_path / "run", "--set", sampling)
    error_line(result, fragment)
    assert not (tmp_path / "run").exists()


def test_bpe_dropout_above_1_is_a_one_line_error(tmp_path, cli) -> None:
    config = write_config(tmp_path)
    args = ["--set", "tokenizer.kind=bpe", "tokenizer.sampling.alpha=1.5"]
    result = cli("train", "--config", config, "--run-dir", tmp_path / "run", *args)
    error_line(result, "tokenizer.sampling.alpha", "(0, 1]")


# --------------------------------------------------------------------------- a training setting


@pytest.mark.usefixtures("single_thread")
def test_sampling_may_be_turned_on_when_resuming_and_when_fine_tuning(tmp_path, cli) -> None:
    config = write_config(tmp_path, max_steps=2)
    plain = ["--set", "tokenizer.sampling=null"]
    assert cli("train", "--config", config, "--run-dir", tmp_path / "run", *plain).returncode == 0
    on = "tokenizer.sampling.alpha=0.3"
    result = cli("train", "--run-dir", tmp_path / "run", "--resume", "--set", on)
    assert result.returncode == 0, result.stderr
    assert load_config(tmp_path / "run" / "config.yaml").tokenizer.sampling.alpha == 0.3
    child = tmp_path / "child"
    result = cli(
        "train", "--config", config, "--run-dir", child, "--init-from", tmp_path / "run",
        "--set", "tokenizer.sampling.alpha=0.5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert load_config(child / "config.yaml").tokenizer.sampling.alpha == 0.5
    assert "segmented by sampling" in (child / "train.log").read_text(encoding="utf-8")


def test_ctrl_c_stops_a_sampling_run_with_one_message_and_no_worker_traceback(tmp_path) -> None:
    config = write_config(tmp_path, max_steps=100000, save_every=1)
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "transformer.cli.train", "--config", config]
    process = subprocess.Popen(  # a session of its own: Ctrl-C reaches its whole group
        [*map(str, command), "--run-dir", str(run_dir)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=ENV,
        start_new_session=True,
    )
    last = run_dir / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the workers sample the next epoch, or wait for work
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert "interrupted by SIGINT" in err


def test_a_killed_sampling_worker_is_a_one_line_error_at_the_next_epoch(setup: Setup) -> None:
    epochs = SampledEpochs(setup.best, setup.tokenizers, setup.config, 1, MAX_LENGTH)
    try:
        epochs.corpus(0)  # the workers now sample epoch 1
        workers = multiprocessing.active_children()
        assert workers
        for worker in workers:
            os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(UserError, match=r"^tokenizer\.sampling: a process sampling") as error:
            epochs.corpus(1)
        assert "\n" not in str(error.value) and "--resume" in str(error.value)
    finally:
        epochs.close()
