"""The scripts (prepare_multi30k, plot_metrics) and benchmarks (train, decode, linear)."""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

import benchmarks.decode
import benchmarks.linear
import benchmarks.train

ROOT = Path(__file__).resolve().parents[1]
SMALL_COUNTS = {"train": 5, "val": 3, "test_2016_flickr": 2}
EXPECT_SMALL = [f"{split}={count}" for split, count in SMALL_COUNTS.items()]


def load_script(name: str) -> ModuleType:
    """Import scripts/<name>.py as a module (scripts/ is not a package)."""
    module_name = f"_script_{name}"
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def prepare() -> ModuleType:
    return load_script("prepare_multi30k")


@pytest.fixture(scope="module")
def plot() -> ModuleType:
    return load_script("plot_metrics")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return benchmarks.train


@pytest.fixture(scope="module")
def decode_bench() -> ModuleType:
    return benchmarks.decode


def gz_lines(lines: list[str]) -> bytes:
    return gzip.compress("".join(f"{line}\n" for line in lines).encode("utf-8"))


def fake_corpus(directory: Path, langs: tuple[str, ...] = ("en", "de")) -> dict[str, bytes]:
    """Small gzipped files with the names and structure of Multi30k task 1."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, count in SMALL_COUNTS.items():
        for lang in langs:
            name = f"{split}.{lang}.gz"
            files[name] = gz_lines([f"{split} {lang} sentence {i}" for i in range(count)])
            (directory / name).write_bytes(files[name])
    return files


def one_error_line(stderr: str) -> str:
    """The error message, checked to be the one last line, after progress lines, no traceback."""
    lines = stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), stderr
    assert "Traceback" not in stderr and sum(line.startswith("error") for line in lines) == 1
    return lines[-1]


# --------------------------------------------------------------------------- prepare_multi30k


def test_copy_from_a_folder_gives_identical_verified_files(prepare, tmp_path, capsys):
    files = fake_corpus(tmp_path / "source")
    out = tmp_path / "out"
    argv = ["--from", str(tmp_path / "source"), "--out", str(out), "--langs", "en", "de"]
    assert prepare.main([*argv, "--expect-lines", *EXPECT_SMALL]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(files)  # no temporary files left
    for name, data in files.items():
        assert (out / name).read_bytes() == data
    summary = capsys.readouterr().out
    for split, count in SMALL_COUNTS.items():
        assert any(split in line and f"{count} lines" in line for line in summary.splitlines())


def test_copy_with_a_missing_file_is_a_one_line_error_naming_it(prepare, tmp_path, capsys):
    fake_corpus(tmp_path / "source")
    (tmp_path / "source" / "val.de.gz").unlink()
    argv = ["--from", str(tmp_path / "source"), "--out", str(tmp_path / "out"), "--langs", "en"]
    code = prepare.main([*argv, "de", "--expect-lines", *EXPECT_SMALL])
    assert code == 2
    assert "val.de.gz" in one_error_line(capsys.readouterr().err)


def test_a_wrong_line_count_is_an_error_naming_file_and_counts(prepare, tmp_path, capsys):
    fake_corpus(tmp_path / "source")
    argv = ["--from", str(tmp_path / "source"), "--out", str(tmp_path / "out"), "--langs", "en"]
    assert prepare.main(argv) == 2  # the real counts: 29000 training lines expected
    line = one_error_line(capsys.readouterr().err)
    assert "train.en.gz has 5 lines, expected 29000" in line


def test_languages_with_different_line_counts_are_not_aligned(prepare, tmp_path):
    fake_corpus(tmp_path)
    (tmp_path / "val.de.gz").write_bytes(gz_lines(["eins", "zwei"]))  # 2 lines, English has 3
    with pytest.raises(prepare.PrepareError, match="not aligned"):
        prepare.verify_split(tmp_path, "val", ["en", "de"], expected_lines=None)
    summary = prepare.verify_split(tmp_path, "train", ["en", "de"], expected_lines=None)
    assert summary.lines == 5


def test_a_line_empty_in_one_language_only_is_misaligned(prepare, tmp_path, capsys):
    fake_corpus(tmp_path / "source")
    (tmp_path / "source" / "test_2016_flickr.de.gz").write_bytes(gz_lines(["eins", "  "]))
    argv = ["--from", str(tmp_path / "source"), "--out", str(tmp_path / "out")]
    code = prepare.main([*argv, "--langs", "en", "de", "--expect-lines", *EXPECT_SMALL])
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert "line 2 is empty in de only" in line


def test_lines_are_split_on_newlines_only_as_training_reads_them(prepare, tmp_path):
    path = tmp_path / "val.en.gz"
    path.write_bytes(gzip.compress("a\u2028b\r\nc\x85d\nlast".encode()))
    assert prepare.read_lines(path) == ["a\u2028b\r", "c\x85d", "last"]


def test_a_file_that_is_not_gzip_is_an_error(prepare, tmp_path, capsys):
    fake_corpus(tmp_path / "source")
    (tmp_path / "source" / "train.en.gz").write_text("plain text\n" * 5, encoding="utf-8")
    argv = ["--from", str(tmp_path / "source"), "--out", str(tmp_path / "out")]
    code = prepare.main([*argv, "--langs", "en", "de", "--expect-lines", *EXPECT_SMALL])
    assert code == 2
    assert "not a valid gzip file" in one_error_line(capsys.readouterr().err)


def test_download_fetches_each_file_once_from_the_official_raw_folder(
    prepare, tmp_path, monkeypatch, capsys
):
    files = fake_corpus(tmp_path / "server", langs=("en", "de", "fr"))
    requested = []

    def fake_urlopen(url: str, timeout: float) -> io.BytesIO:
        requested.append(url)
        return io.BytesIO(files[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    out = tmp_path / "out"
    assert prepare.main(["--out", str(out), "--expect-lines", *EXPECT_SMALL]) == 0
    base = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
    assert sorted(requested) == sorted(f"{base}/{name}" for name in files)
    assert all((out / name).read_bytes() == data for name, data in files.items())
    requested.clear()
    assert prepare.main(["--out", str(out), "--expect-lines", *EXPECT_SMALL]) == 0
    assert requested == []  # files already there are kept and verified again
    capsys.readouterr()


def test_network_failure_is_a_one_line_error_suggesting_from(
    prepare, tmp_path, monkeypatch, capsys
):
    def no_network(url: str, timeout: float) -> io.BytesIO:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    out = tmp_path / "out"
    assert prepare.main(["--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "cannot download" in line and "Name or service not known" in line
    assert "--from" in line
    assert not out.exists() or list(out.iterdir()) == []


def test_a_download_cut_off_midway_leaves_no_file_behind(prepare, tmp_path, monkeypatch, capsys):
    class Broken(io.BytesIO):
        def read(self, size: int = -1) -> bytes:
            if self.tell() > 0:
                raise ConnectionResetError("connection reset by peer")
            return super().read(4)

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Broken(b"x" * 100))
    out = tmp_path / "out"
    assert prepare.main(["--out", str(out)]) == 2
    assert "connection reset by peer" in one_error_line(capsys.readouterr().err)
    assert list(out.iterdir()) == []  # neither train.en.gz nor its temporary file


# --------------------------------------------------------------------------- plot_metrics


def write_run(directory: Path, entries: list[dict]) -> Path:
    directory.mkdir(parents=True)
    lines = "".join(json.dumps(entry) + "\n" for entry in entries)
    (directory / "metrics.jsonl").write_text(lines, encoding="utf-8")
    return directory


def run_entries(bleus: list[float | None]) -> list[dict]:
    return [
        {"step": 100 * (i + 1), "elapsed_s": 60.0 * (i + 1), "bleu": bleu, "valid_loss": 3.0 - i}
        for i, bleu in enumerate(bleus)
    ]


def test_plot_writes_a_png_with_one_line_per_run(plot, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    first = write_run(tmp_path / "a", run_entries([5.0, 12.5, 20.0]))
    second = write_run(tmp_path / "b", run_entries([4.0, 10.0]))
    output = tmp_path / "docs" / "bleu.png"
    argv = [str(first), str(second), "--output", str(output), "--labels", "A", "B"]
    assert plot.main(argv) == 0
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.main([str(first), "--output", str(output), "--x", "step"]) == 0
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()


def test_plot_without_matplotlib_says_how_to_install_it(plot, tmp_path, monkeypatch, capsys):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # makes the import fail
    run = write_run(tmp_path / "a", run_entries([5.0]))
    output = tmp_path / "bleu.png"
    assert plot.main([str(run), "--output", str(output)]) == 2
    assert "pip install -e '.[plot]'" in one_error_line(capsys.readouterr().err)
    assert not output.exists()


def test_training_time_keeps_growing_across_a_resume(plot):
    assert plot.cumulative_seconds([10.0, 20.0, 5.0, 15.0]) == [10.0, 20.0, 25.0, 35.0]


def test_curve_skips_validations_without_the_metric(plot, tmp_path):
    run = write_run(tmp_path / "a", run_entries([None, 7.0, 9.0]))
    curve = plot.curve_of(run / "metrics.jsonl", "a", "bleu")
    assert curve.steps == [200, 300] and curve.values == [7.0, 9.0]
    assert curve.seconds == [120.0, 180.0]


def test_a_run_without_bleu_is_an_error_pointing_at_eval_bleu(plot, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = write_run(tmp_path / "a", run_entries([None, None]))
    assert plot.main([str(run), "--output", str(tmp_path / "x.png")]) == 2
    assert "eval_bleu" in one_error_line(capsys.readouterr().err)


def test_labels_must_match_the_runs(plot, tmp_path, capsys):
    run = write_run(tmp_path / "a", run_entries([5.0]))
    assert plot.main([str(run), "--labels", "one", "two"]) == 2
    assert "one label per run" in one_error_line(capsys.readouterr().err)


# --------------------------------------------------------------------------- benchmarks.train


def test_synthetic_batch_is_padded_like_a_real_batch(bench):
    src, tgt_in, tgt_out = bench.synthetic_batch(
        np.array([3, 5]), np.array([4, 2]), (50, 60), seed=0
    )
    assert src.shape == (2, 5) and tgt_in.shape == tgt_out.shape == (2, 4)
    assert src[0].tolist()[2:] == [3, 0, 0] and src[1, 4] == 3  # EOS, then PAD
    assert tgt_out[1].tolist()[1:] == [3, 0, 0]
    assert int((tgt_out != 0).sum()) == 4 + 2
    assert tgt_in[:, 0].tolist() == [2, 2]  # BOS
    assert tgt_in[0, 1:].tolist() == tgt_out[0, :-1].tolist()
    assert tgt_in[1].tolist()[2:] == [0, 0]
    assert int(src.max()) < 50 and int(tgt_out.max()) < 60


def test_planned_groups_follow_the_epochs_like_the_trainer(bench):
    from transformer.data.batching import TokenBatchSampler

    sampler = TokenBatchSampler([3] * 10, [4] * 10, batch_tokens=8, seed=1)  # 5 batches of 2
    groups = bench.planned_groups(sampler, accumulate_steps=2, count=5)
    assert groups[:3] == [
        sampler.batches(0)[0:2],
        sampler.batches(0)[2:4],
        sampler.batches(0)[4:5],  # the epoch's last, shorter group
    ]
    assert groups[3:] == [sampler.batches(1)[0:2], sampler.batches(1)[2:4]]


def measurement(bench, kind: str, padded_per_s: float, device: str = "cpu", slow_step: float = 0):
    """Ten steps of a tenth of a second each (the first `slow_step` seconds longer)."""
    step_seconds = [0.1 + slow_step] + [0.1] * 9
    return bench.Measurement(
        device=device,
        kind=kind,
        steps=10,
        seconds=sum(step_seconds),
        cpu_seconds=2.0,
        target_tokens=int(padded_per_s * 0.8),
        padded_tokens=int(padded_per_s),
        memory_mib=100.0,
        step_seconds=step_seconds,
        step_padded=[int(padded_per_s) // 10] * 10,
    )


def test_cpu_rates_ignore_a_step_slowed_down_by_other_programs(bench):
    disturbed = measurement(bench, "pipeline", 10000.0, slow_step=5.0)
    assert disturbed.padded_per_s == pytest.approx(10000.0)
    assert disturbed.target_per_s == pytest.approx(8000.0)
    on_cuda = measurement(bench, "pipeline", 10000.0, device="cuda", slow_step=1.0)
    assert on_cuda.padded_per_s == pytest.approx(10000.0 / 2.0)  # asynchronous: the whole span


def test_table_reports_the_pipeline_to_bare_ratio_and_the_verdict(bench):
    results = [measurement(bench, "pipeline", 9000.0), measurement(bench, "bare step", 10000.0)]
    table = bench.format_table(results)
    assert "pipeline/bare" in table and "0.900x" in table
    assert "10,000" in table and "9,000" in table
    (verdict,) = bench.verdicts(results)
    assert "10.0% slower" in verdict and "within the target" in verdict
    slow = [measurement(bench, "pipeline", 5000.0), measurement(bench, "bare step", 10000.0)]
    assert "OVER the target" in bench.verdicts(slow)[0]
    fast = [measurement(bench, "pipeline", 11000.0), measurement(bench, "bare step", 10000.0)]
    assert "faster" in bench.verdicts(fast)[0]


def test_best_of_keeps_the_fastest_round_of_each_kind(bench):
    rounds = [
        measurement(bench, "pipeline", 8000.0),
        measurement(bench, "bare step", 9000.0),
        measurement(bench, "bare step", 10000.0),
        measurement(bench, "pipeline", 7000.0),
    ]
    best = bench.best_of(rounds)
    assert [(m.kind, m.padded_tokens) for m in best] == [("pipeline", 8000), ("bare step", 10000)]


def test_quick_benchmark_times_pipeline_and_bare_step_on_the_same_batches(bench, tmp_path, capsys):
    config = {
        "model": {
            "d_model": 32,
            "num_heads": 2,
            "d_ff": 64,
            "num_encoder_layers": 1,
            "num_decoder_layers": 1,
            "share_embeddings": True,
        },
        "tokenizer": {"vocab_size": 200},
        "data": {
            "train": {
                "src_path": str(ROOT / "data" / "train.en"),
                "tgt_path": str(ROOT / "data" / "train.de"),
            },
        },
        "training": {"batch_tokens": 300, "schedule": "inverse_sqrt", "warmup_steps": 5},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    results_file = tmp_path / "results.json"
    argv = ["--config", str(path), "--quick", "--devices", "cpu", "--threads", "1"]
    argv += ["--json", str(results_file)]
    results = bench.benchmark([*argv, "--work-dir", str(tmp_path / "work")])
    pipeline, bare = sorted(results, key=lambda m: m.kind != "pipeline")
    assert (pipeline.kind, bare.kind) == ("pipeline", "bare step")
    assert pipeline.steps == bare.steps == 3
    # The bare step replays the shapes of the batches the Trainer really took.
    assert pipeline.target_tokens == bare.target_tokens > 0
    assert pipeline.padded_tokens == bare.padded_tokens >= pipeline.target_tokens
    assert pipeline.seconds > 0 and bare.seconds > 0
    assert json.loads(results_file.read_text())[0]["target_tokens"] == pipeline.target_tokens
    out = capsys.readouterr().out
    assert "pipeline/bare" in out and "than the bare step" in out
    assert not (tmp_path / "work" / "run" / "checkpoints").exists()  # nothing saved


def test_benchmark_with_a_bad_config_is_a_one_line_error(bench, tmp_path, capsys):
    assert bench.main(["--config", str(tmp_path / "missing.yaml"), "--quick"]) == 2
    assert "missing.yaml" in one_error_line(capsys.readouterr().err)


# -------------------------------------------------------------------------- benchmarks.decode


def test_decode_benchmark_prints_every_mode_and_the_cache_speedup(decode_bench, tmp_path, capsys):
    argv = ["--data", str(tmp_path), "--sentences", "12", "--uncached-sentences", "6"]
    argv += ["--batch-size", "6", "--length", "3", "--beam", "2", "--cpu-only", "--rounds", "2"]
    argv += ["--threads", "1"]  # the suite runs on one thread
    assert decode_bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "synthetic" in out  # no Multi30k in tmp_path
    table = out[out.index("mode ") :].splitlines()
    rows = [line.split() for line in table[1:7]]
    assert [("".join(r[:-6]), r[-6], r[-5]) for r in rows] == [  # mode, cache, workers
        ("greedy", "yes", "1"),
        ("greedy", "yes", "2"),
        ("greedy", "no", "1"),
        ("beam2", "yes", "1"),
        ("beam2", "yes", "2"),
        ("beam2", "no", "1"),
    ]
    assert "cache speedup for beam 2 on cpu" in out


def test_decode_timing_keeps_each_batchs_fastest_round(decode_bench, monkeypatch):
    # Batch 0 is slow in round 1, batch 1 in round 2: the sum of minima is 2 x 1 s.
    clock = iter([0.0, 5.0, 5.0, 6.0, 6.0, 7.0, 7.0, 12.0])
    fake_time = SimpleNamespace(perf_counter=lambda: next(clock), process_time=lambda: 0.0)
    monkeypatch.setattr(decode_bench, "time", fake_time)
    batches = [torch.zeros(2, 3, dtype=torch.long)] * 2
    seconds, _, tokens = decode_bench.time_decoding(
        lambda batch: [4] * batch.size(0), batches, torch.device("cpu"), 4, rounds=2
    )
    assert seconds == 2.0
    assert tokens == 16  # 2 batches x 2 sentences x 4 tokens, counted once


def test_linear_benchmark_times_both_libraries_and_names_the_training_path(monkeypatch, capsys):
    linear_bench = benchmarks.linear
    small = ["--threads", "1", "--d-model", "16", "--d-ff", "32", "--vocab", "64", "--repeats", "1"]
    assert linear_bench.main(small) == 0
    out = capsys.readouterr().out
    if not linear_bench.onednn_available():
        assert "no oneDNN" in out
        return
    rows = [line.split() for line in out.splitlines()[2:]]
    assert len(rows) == 6 * 4 + 4  # six row counts × four layers, and the output layer
    path = {(row[0], int(row[1])): row[-1] for row in rows}
    assert path["W_1", 4096] == path["W_out", 256] == "oneDNN"  # training batches
    assert path["W_1", 64] == path["W_out", 1] == "MKL"  # decoding steps
    assert all(len(row) == 11 for row in rows if int(row[1]) >= 256)  # with fwd+bwd times
