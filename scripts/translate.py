"""Translate text: the same as `transformer-translate` (see --help)."""

from transformer.cli.translate import main

if __name__ == "__main__":
    raise SystemExit(main())
