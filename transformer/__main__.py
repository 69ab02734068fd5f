"""`python -m transformer`: list the command-line programs."""

from __future__ import annotations

import sys

COMMANDS = {
    "transformer-train": "train a model from a YAML config into a run directory",
    "transformer-translate": "translate text with a trained run directory",
    "transformer-evaluate": "translate a test set and score it with sacreBLEU (BLEU, chrF)",
    "transformer-average": "average the parameters of several checkpoints",
    "transformer-explain": "follow a sentence through a trained model: shapes and attention",
    "transformer-serve": "serve a trained run: a JSON API and a page that shows its attention",
    "transformer-export": "export a trained run to CTranslate2 or a Hugging Face MarianMT folder",
    "transformer-import": "import a Hugging Face MarianMT (OPUS-MT) model as a run directory",
}


def main() -> int:
    """Print the commands this package installs."""
    lines = ["usage: <command> --help", "", "commands:"]
    lines += [f"  {name:<24}{text}" for name, text in COMMANDS.items()]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
