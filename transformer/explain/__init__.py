"""Explaining: a sentence's path through the model, and attention heatmaps."""
