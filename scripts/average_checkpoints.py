"""Average checkpoints: the same as `transformer-average` (see --help)."""

from transformer.cli.average import main

if __name__ == "__main__":
    raise SystemExit(main())
