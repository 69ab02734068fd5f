"""The limits and batching of one server: each field is a transformer-serve option."""

from __future__ import annotations

from dataclasses import dataclass

from transformer.errors import UserError

BATCHING = ("continuous", "groups")  # --batching: how concurrent requests share the model


@dataclass(frozen=True)
class ServeSettings:
    """Limits and batching of one server; field `max_texts` is the option --max-texts."""

    max_texts: int = 64  # texts in one /translate request
    max_request_bytes: int = 1 << 20  # a request body's size
    max_beam_size: int = 16  # the largest beam_size a request may ask for
    max_batch_tokens: int | None = None  # source tokens decoded together; None: the run's
    batching: str = "groups"  # groups: gathered batches; continuous: join the decode under way
    batch_window_ms: float = 5.0  # groups: how long the first request of a batch waits
    workers: int = 1  # decodes (continuous) or batches (groups) at once, a thread each
    checkpoint: str = ""  # the checkpoint file, as /info reports it

    def __post_init__(self) -> None:
        for name in ("max_texts", "max_request_bytes", "max_beam_size", "workers"):
            _at_least(name, getattr(self, name), 1)
        if self.max_batch_tokens is not None:
            _at_least("max_batch_tokens", self.max_batch_tokens, 1)
        _at_least("batch_window_ms", self.batch_window_ms, 0)
        if self.batching not in BATCHING:
            raise UserError(
                f"--batching must be one of {', '.join(BATCHING)} (got {self.batching!r})"
            )


def _at_least(name: str, value: float, low: float) -> None:
    if not value >= low:  # NaN too
        raise UserError(f"--{name.replace('_', '-')} must be >= {low} (got {value})")
