"""`transformer-serve --engine ctranslate2`: /translate decoded by a CTranslate2 export.

The groups batcher (`batcher.py`) in front of the text code of `transformer-translate
--engine ctranslate2`: concurrent requests are gathered into groups, and each group is one
`CTranslate2Translator.translate` call, which queues the group's token-budget batches in
CTranslate2 at once (`asynchronous=True`) and waits for their results in a worker thread,
off the event loop. CTranslate2 decodes each call's batches as jobs of their own (it does
not merge separate calls), so the gathering happens here. `workers` groups are in flight at
once, as many as CTranslate2 has threads decoding (`inter_threads`). /explain is not decoded
here: an export has no attention to show, so the app explains with PyTorch.
"""

from __future__ import annotations

from typing import Any

from transformer.export.engine import CTranslate2Translator
from transformer.serve.batcher import Batcher
from transformer.serve.settings import ServeSettings


class CTranslate2Engine(Batcher):
    """The groups batcher over a CTranslate2 export; `describe` is what /info says of it."""

    name = "ctranslate2"

    def __init__(
        self, translator: CTranslate2Translator, settings: ServeSettings, max_tokens: int
    ) -> None:
        super().__init__(translator, max_tokens, settings.batch_window_ms / 1000, settings.workers)
        self.export = translator

    def describe(self) -> dict[str, Any]:
        """What GET /info says of the engine and its export."""
        record = self.export.record
        return {
            "engine": self.name,
            "export": {
                "directory": str(self.export.directory),
                "quantization": record.quantization,
                "checkpoint": record.checkpoint,
            },
        }
