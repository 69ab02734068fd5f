"""Decoding: greedy and beam search over the model, a run as a translator, sacreBLEU scoring."""
