"""Translate and score a test set: the same as `transformer-evaluate` (see --help)."""

from transformer.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
