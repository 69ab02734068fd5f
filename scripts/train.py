"""Train a model: the same as `transformer-train` (see --help)."""

from transformer.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main())
