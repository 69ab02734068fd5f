"""Text to token ids to batches: corpora and tables, SentencePiece tokenizers, special ids,
token-budget batching."""
