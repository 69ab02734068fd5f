"""The JSON bodies of the API, and the checks that turn a request into work for the model.

Pydantic checks the types (strictly: "5" is not a beam size), refuses unknown fields and text
that is not Unicode (a lone surrogate such as "\\ud800", which JSON can escape but UTF-8
cannot encode); `translate_work` and `explain_work` check the values against the model, the
bounds of `DecodingConfig` (its own messages) and the server's limits, and raise a
`RequestError` that names the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from transformer.config import MAX_LENGTH_PENALTY, ConfigError, DecodingConfig
from transformer.decoding.translator import Translation, Translator
from transformer.serve.settings import ServeSettings


class RequestError(Exception):
    """A request the server refuses: which field, what is wrong with it, the HTTP status."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


def _unicode(text: str) -> str:
    """`text` if it is Unicode text; a lone surrogate (JSON's "\\ud800") is refused."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(text[error.start])
        raise ValueError(
            f"holds a lone surrogate (U+{code:04X}) at character {error.start}, which is not "
            "Unicode text; send the text as UTF-8"
        ) from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]


class _Body(BaseModel):
    """A request body: exact JSON types, no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True)


class DecodingFields(_Body):
    """The decoding settings a request may change (unset: the run's `decoding:` section)."""

    beam_size: int | None = Field(None, description="beam width; 1 = greedy search")
    length_penalty: float | None = Field(
        None,
        description="GNMT alpha: score / ((5 + length) / 6) ** alpha; 0 = none; at most "
        f"{MAX_LENGTH_PENALTY:g}",
    )


class TranslateRequest(DecodingFields):
    """`text` (one sentence) or `texts` (several), and optional decoding settings."""

    text: Text | None = Field(None, examples=["how are you"])
    texts: list[Text] | None = Field(None, examples=[["how are you", "good night"]])
    nbest: int | None = Field(None, description="hypotheses per text, at most beam_size")


class ExplainRequest(DecodingFields):
    """One sentence to translate and explain."""

    text: Text = Field(examples=["how are you"])


class Hypothesis(BaseModel):
    """One translation and its model score (a length-penalised log-probability)."""

    text: str
    score: float


class TranslationResult(BaseModel):
    """The best translation of one text, and its n-best list (best first, itself included)."""

    text: str
    score: float
    nbest: list[Hypothesis]


class TranslateResponse(BaseModel):
    """One result per text, in the order of the request."""

    translations: list[TranslationResult]


class ExplainResponse(BaseModel):
    """The JSON of transformer-explain's attention.json: pieces, and maps [layer][head][q][k]."""

    source: str
    translation: str
    score: float
    source_pieces: list[str]
    target_pieces: list[str] = Field(description="what each decoder position produced")
    decoder_input_pieces: list[str] = Field(description="what each decoder position read")
    encoder_self: list[list[list[list[float]]]] = Field(description="[layer][head][S][S]")
    decoder_self: list[list[list[list[float]]]] = Field(description="[layer][head][T][T]")
    cross: list[list[list[list[float]]]] = Field(description="[layer][head][T][S]")


class ErrorResponse(BaseModel):
    """Every refusal: the field at fault (or "body", "path") and what to do."""

    error: str = Field(examples=["beam_size: must be at most 16, this server's limit (got 20)"])
    field: str = Field(examples=["beam_size"])


@dataclass(frozen=True)
class TranslateWork:
    """A checked /translate request: its lines, their source tokens, and how to decode them."""

    lines: list[str]
    tokens: int
    decoding: DecodingConfig


def translate_work(
    request: TranslateRequest,
    translator: Translator,
    defaults: DecodingConfig,
    settings: ServeSettings,
) -> TranslateWork:
    """Check a /translate request against the model and the limits; RequestError if wrong."""
    if request.text is not None and request.texts is not None:
        raise RequestError("texts", "give either text (one sentence) or texts (a list), not both")
    if request.text is not None:
        named = [("text", request.text)]
    elif request.texts is not None:
        if not request.texts:
            raise RequestError("texts", "is an empty list; give at least one text")
        if len(request.texts) > settings.max_texts:
            raise RequestError(
                "texts",
                f"{len(request.texts)} texts, more than this server's limit of "
                f"{settings.max_texts}; send them in several requests",
                status=413,
            )
        named = [(f"texts[{i}]", text) for i, text in enumerate(request.texts)]
    else:
        raise RequestError("text", 'missing; send {"text": "..."} or {"texts": ["...", ...]}')
    tokens = sum(_source_tokens(translator, name, text) for name, text in named)
    decoding = _decoding(request, defaults, settings.max_beam_size, nbest=request.nbest)
    return TranslateWork([text for _, text in named], tokens, decoding)


def explain_work(
    request: ExplainRequest,
    translator: Translator,
    defaults: DecodingConfig,
    settings: ServeSettings,
) -> DecodingConfig:
    """Check an /explain request; returns the decoding settings to explain it with."""
    _source_tokens(translator, "text", request.text)
    return _decoding(request, defaults, settings.max_beam_size, nbest=1)


def _source_tokens(translator: Translator, field: str, text: str) -> int:
    """The tokens the encoder reads for `text` (EOS included); refuses empty and too long."""
    if not text.strip():
        raise RequestError(field, "is empty; give a sentence to translate")
    pieces = len(translator.tokenizers.src.encode(text))
    if pieces == 0:
        raise RequestError(field, "has no pieces the tokenizer knows; give a sentence")
    if pieces > translator.max_source_tokens:
        raise RequestError(
            field,
            f"has {pieces} pieces, more than the model's limit of "
            f"{translator.max_source_tokens}; split it into shorter sentences",
            status=413,
        )
    return pieces + 1


def _decoding(
    request: DecodingFields, defaults: DecodingConfig, max_beam_size: int, nbest: int | None
) -> DecodingConfig:
    """The server's decoding settings with the request's changes, checked.

    The bounds of each setting are `DecodingConfig`'s (its message, under the field's name);
    `max_beam_size` is this server's own limit, a service setting (--max-beam-size).
    """
    beam_size = request.beam_size
    if beam_size is not None and beam_size > max_beam_size:
        raise RequestError(
            "beam_size", f"must be at most {max_beam_size}, this server's limit (got {beam_size})"
        )
    changes = {"beam_size": beam_size, "length_penalty": request.length_penalty, "nbest": nbest}
    changes = {name: value for name, value in changes.items() if value is not None}
    for name, value in changes.items():
        try:
            DecodingConfig.check_setting(name, value)
        except ConfigError as error:
            raise RequestError(name, error.message) from None
    try:
        return dataclasses.replace(defaults, **changes)
    except ConfigError as error:  # how the settings relate: nbest <= beam_size
        hint = "; ask for a larger beam_size" if error.key == "nbest" else ""
        raise RequestError(error.key, error.message + hint) from None


def translate_response(results: list[list[Translation]]) -> TranslateResponse:
    """The response body for the n-best lists of each text, in order."""
    return TranslateResponse(
        translations=[
            TranslationResult(
                text=nbest[0].text,
                score=round(nbest[0].score, 4),
                nbest=[Hypothesis(text=h.text, score=round(h.score, 4)) for h in nbest],
            )
            for nbest in results
        ]
    )
