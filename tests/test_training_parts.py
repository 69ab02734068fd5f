"""The parts of training, each alone: retention, validation, metrics.jsonl, the step report."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
from pathlib import Path

import datasets
import pytest
import sacrebleu
import torch
import torch.nn.functional as F
from tiny_runs import PAIRS, make_tiny_run

from transformer.config import Config, DecodingConfig, TrainingConfig, load_config
from transformer.data.corpus import EncodedCorpus, encode_corpus
from transformer.data.special_ids import PAD_ID
from transformer.data.tokenizer import TokenizerPair, load_tokenizers
from transformer.decoding.search import greedy_search
from transformer.model import Transformer
from transformer.training.checkpoint import load_checkpoint
from transformer.training.report import StepReport
from transformer.training.retention import CheckpointRetention, link_checkpoint, step_file_name
from transformer.training.state import Progress
from transformer.training.trainer import Trainer
from transformer.training.validation import MetricsLog, ValidationResult, Validator

CPU = torch.device("cpu")


# =========================================================================== retention


def write_last(directory: Path, step: int) -> Path:
    """A stand-in last.pt holding its step, written as `save_checkpoint` does: a new file."""
    last = directory / "last.pt"
    last.unlink(missing_ok=True)
    last.write_bytes(f"step {step}".encode())
    return last


@pytest.mark.parametrize("keep_best", [1, 2, 3])
def test_retention_keeps_exactly_the_k_best_by_metric_earlier_first_on_ties_and_deletes_the_rest(
    tmp_path: Path, keep_best: int
) -> None:
    retention = CheckpointRetention(tmp_path, keep_best)
    metrics = random.Random(keep_best).choices([0.0, 1.0, 2.0, 3.0], k=20)  # many ties
    kept: list = []
    for step, metric in enumerate(metrics, start=1):
        plan = retention.plan(kept, step, metric)
        kept = plan.kept
        retention.apply(write_last(tmp_path, step), plan, improved=False)
        seen = range(1, step + 1)
        best = sorted(seen, key=lambda s: (-metrics[s - 1], s))[:keep_best]
        assert [name for _, name in kept] == [step_file_name(s) for s in best]
        assert sorted(p.name for p in tmp_path.glob("step_*.pt")) == sorted(
            step_file_name(s) for s in best
        )
        for s in best:  # each kept file holds the state of its own step
            assert (tmp_path / step_file_name(s)).read_bytes() == f"step {s}".encode()


def test_retention_with_keep_best_zero_leaves_the_step_files_as_they_are(tmp_path: Path) -> None:
    old = [[5.0, step_file_name(3)]]
    (tmp_path / step_file_name(3)).write_bytes(b"old")
    retention = CheckpointRetention(tmp_path, 0)
    plan = retention.plan(old, 6, 9.0)
    retention.apply(write_last(tmp_path, 6), plan, improved=False)
    assert plan.kept == old and plan.added is None and plan.deleted == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", step_file_name(3)]


def test_retention_links_the_step_file_and_best_to_last_and_only_best_when_improved(
    tmp_path: Path,
) -> None:
    retention = CheckpointRetention(tmp_path, 2)
    plan = retention.plan([], 4, 1.0)
    retention.apply(write_last(tmp_path, 4), plan, improved=False)
    assert not (tmp_path / "best.pt").exists()
    last = write_last(tmp_path, 8)
    retention.apply(last, retention.plan(plan.kept, 8, 2.0), improved=True)
    assert os.path.samefile(tmp_path / "best.pt", last)
    assert os.path.samefile(tmp_path / step_file_name(8), last)
    assert (tmp_path / step_file_name(4)).read_bytes() == b"step 4"


def test_link_checkpoint_copies_where_hard_links_fail_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformer.training.retention as retention_module

    def no_links(source: object, target: object) -> None:
        raise OSError("links not supported")

    source = tmp_path / "last.pt"
    source.write_bytes(b"state")
    (tmp_path / "best.pt").write_bytes(b"older state")
    monkeypatch.setattr(retention_module.os, "link", no_links)
    link_checkpoint(source, tmp_path / "best.pt")
    assert (tmp_path / "best.pt").read_bytes() == b"state"
    assert not os.path.samefile(source, tmp_path / "best.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_progress_counts_validations_without_improvement_and_resets_on_a_better_one() -> None:
    progress = Progress()
    improved = [progress.record_validation(m) for m in (1.0, 3.0, 2.0, 3.0, 4.0, 0.0)]
    assert improved == [True, True, False, False, True, False]
    assert progress.best_metric == 4.0 and progress.evals_without_improvement == 1


# =========================================================================== validation


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Transformer, TokenizerPair]:
    """A tiny model fitted for a few steps to the tiny corpus, its config and tokenizers.

    Fitted so that its translations are partly right: a BLEU of 0 would prove little.
    """
    run_dir = make_tiny_run(tmp_path_factory.mktemp("parts") / "run")
    config = load_config(run_dir / "config.yaml")
    model = Transformer(config.model)
    model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"])
    tokenizers = load_tokenizers(run_dir / "tokenizer")
    batch = encoded_pairs(tokenizers).collate(list(range(len(PAIRS))), PAD_ID)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        logits = model(batch.src, batch.tgt_in)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD_ID)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return config, model.eval(), tokenizers


def encoded_pairs(tokenizers: TokenizerPair) -> EncodedCorpus:
    """The tiny corpus, encoded as training reads it (no pair dropped)."""
    src, tgt = zip(*PAIRS, strict=True)
    dataset = datasets.Dataset.from_dict({"src": list(src), "tgt": list(tgt)})
    return encode_corpus(dataset, tokenizers, 1000, 1000.0, filter=False)


def validator(tiny: tuple, data: EncodedCorpus, **training: object) -> Validator:
    config, model, tokenizers = tiny
    decoding = DecodingConfig(beam_size=1, max_len_a=1.0, max_len_b=3)
    settings = TrainingConfig(**{"batch_tokens": 40, **training})  # several batches
    return Validator(model, data, tokenizers, settings, decoding, CPU, contextlib.nullcontext)


def test_validation_loss_is_the_mean_token_nll_of_the_corpus_and_perplexity_its_exp(
    tiny: tuple,
) -> None:
    data = encoded_pairs(tiny[2])
    result = validator(tiny, data, eval_bleu=False).validate(lambda: False)
    assert result is not None and result.bleu is None and result.samples == []
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(len(data)):  # one sentence at a time: no padding
            batch = data.collate([i], PAD_ID)
            logits = tiny[1](batch.src, batch.tgt_in)
            nll += F.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), reduction="sum")
            tokens += batch.num_target_tokens
    assert result.loss == pytest.approx(float(nll) / tokens, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(result.loss), rel=1e-9)


def test_validation_bleu_and_chrf_are_sacrebleus_on_the_greedy_translations_in_corpus_order(
    tiny: tuple,
) -> None:
    config, model, tokenizers = tiny
    data = encoded_pairs(tokenizers)
    result = validator(tiny, data, eval_samples=2).validate(lambda: False)
    hypotheses = []
    with torch.no_grad():
        for i in range(len(data)):
            (best,) = greedy_search(model, data.collate([i], PAD_ID).src, 1.0, 3)[0]
            hypotheses.append(tokenizers.tgt.decode(best.tokens))
    references = [tgt for _, tgt in PAIRS]
    assert result is not None and 0 < result.bleu < 100
    assert result.bleu == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)
    assert result.chrf == pytest.approx(sacrebleu.corpus_chrf(hypotheses, [references]).score)
    assert result.samples == [(PAIRS[i][0], PAIRS[i][1], hypotheses[i]) for i in range(2)]


def test_a_stop_request_cuts_validation_short_with_no_result(tiny: tuple, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="transformer"):
        assert validator(tiny, encoded_pairs(tiny[2])).validate(lambda: True) is None
    assert "validation cut short: stopping" in caplog.messages


def test_metrics_log_appends_one_json_line_per_validation_in_a_fixed_key_order(
    tmp_path: Path,
) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    results = [ValidationResult(3.0, math.exp(3.0)), ValidationResult(2.0, 7.4, 12.5, 40.0)]
    for step, result in enumerate(results, start=1):
        log.append(result, step=10 * step, epoch=1, elapsed=1.234, lr=1e-3, train_loss=2.5)
    lines = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert [list(line) for line in lines] == [
        [
            "step",
            "epoch",
            "elapsed_s",
            "lr",
            "train_loss",
            "valid_loss",
            "valid_ppl",
            "bleu",
            "chrf",
        ]  # fmt: skip
    ] * 2
    assert [(line["step"], line["valid_loss"], line["bleu"]) for line in lines] == [
        (10, 3.0, None),
        (20, 2.0, 12.5),
    ]
    assert lines[0]["elapsed_s"] == 1.23


def test_a_training_writes_one_metrics_line_and_keeps_step_files_by_validation(
    tiny: tuple, tmp_path: Path
) -> None:
    config, _, tokenizers = tiny
    training = TrainingConfig(device="cpu", max_steps=6, eval_every=2, log_every=100,
                              batch_tokens=60, keep_best=2, eval_bleu=False,
                              progress_bar=False, warmup_steps=2)  # fmt: skip
    config = dataclasses.replace(config, training=training)
    data = encoded_pairs(tokenizers)
    trainer = Trainer(config, Transformer(config.model), tokenizers, data, data, tmp_path, CPU)
    trainer.train()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4, 6]
    best_two = sorted(lines, key=lambda line: (line["valid_loss"], line["step"]))[:2]
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*.pt"))
    assert kept == sorted(step_file_name(line["step"]) for line in best_two)


# =========================================================================== the step report


def test_the_logged_loss_is_per_target_token_over_the_steps_since_the_last_log_line(
    caplog,
) -> None:
    cfg = TrainingConfig(log_every=2, eval_every=1000, max_steps=10)
    report = StepReport(cfg, first_step=0, show_bar=False, device=CPU)
    steps = [(6.0, 3, 1e-3), (4.0, 2, 2e-3), (9.0, 3, 3e-3), (3.0, 1, 4e-3)]
    with caplog.at_level(logging.INFO, logger="transformer"):
        for step, (loss, tokens, lr) in enumerate(steps, start=1):
            report.add(torch.tensor(loss), tokens, lr)
            report.show(step, epoch=0)
    report.close()
    lines = [m for m in caplog.messages if m.startswith("step ")]
    assert [line.split(" target")[0].rsplit(" ", 1)[0] for line in lines] == [
        "step 2 epoch 1: loss 2.000 lr 2.00e-03",
        "step 4 epoch 1: loss 3.000 lr 4.00e-03",
    ]
    assert report.train_loss == 3.0 and report.lr == 4e-3
