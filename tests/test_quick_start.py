"""The README's quick start, as a user runs it: train configs/toy.yaml, translate "how are you"."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_start_trains_the_toy_model_that_translates_how_are_you(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    run_dir = tmp_path / "toy"

    def command(program: str, *args: object) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", f"transformer.cli.{program}", *map(str, args)]
        return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)

    start = time.perf_counter()
    trained = command("train", "--config", "configs/toy.yaml", "--run-dir", run_dir)
    seconds = time.perf_counter() - start
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "reached training.max_steps" in trained.stderr  # steps, not the time cap, end it
    translated = command("translate", "--run", run_dir, "--text", "how are you")
    assert translated.returncode == 0, translated.stderr[-2000:]
    assert translated.stdout == "wie geht es dir\n"
    print(f"quick start: trained in {seconds:.0f} s")
