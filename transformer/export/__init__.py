"""Exporting: a run as a CTranslate2 model, and decoding with it."""
