"""`transformer-serve`: a trained run behind an HTTP address: a JSON API and a page.

Examples::

    transformer-serve --run runs/toy                     # http://127.0.0.1:8000/
    transformer-serve --run runs/toy --port 8080 --checkpoint averaged --max-batch-tokens 2000
    transformer-serve --run runs/toy --engine ctranslate2   # /translate by RUN/ctranslate2

The page at / translates a sentence and draws its attention; the API (POST /translate,
POST /explain, GET /info, GET /health) is documented at /docs. It listens on localhost
unless --host says otherwise. Needs the `serve` extra: pip install -e '.[serve]'.
With --engine ctranslate2, /translate is decoded by a CTranslate2 export (--export DIR, else
RUN/ctranslate2, made or remade as transformer-translate does); /explain and the page's
attention still come from the PyTorch model of --checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import signal
import socket
import threading
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from transformer.cli.common import CommandParser, run_command, setup_logging
from transformer.cli.decoding import DTYPES, add_reference_flag, load_translator
from transformer.cli.engine import add_engine_flags, ctranslate2_translator, uses_ctranslate2
from transformer.errors import UserError
from transformer.serve.settings import BATCHING, ServeSettings
from transformer.training.checkpoint import resolve_checkpoint

if TYPE_CHECKING:
    import uvicorn

    from transformer.decoding.translator import Translator
    from transformer.serve.ctranslate2_engine import CTranslate2Engine

logger = logging.getLogger("transformer.cli.serve")

EXTRA = "pip install -e '.[serve]' (or pip install 'transformer[serve]')"
LIMITS = {  # ServeSettings fields, each an option
    "max_texts": "texts in one request",
    "max_request_bytes": "bytes in a request body",
    "max_beam_size": "the largest beam_size a request may ask for",
}


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of transformer-serve."""
    parser = CommandParser(
        prog="transformer-serve",
        description="Serve a trained run: a JSON API (POST /translate, POST /explain, "
        "GET /info, GET /health; documented at /docs) and a page at / that shows the "
        "translation and its attention.",
        allow_abbrev=False,
    )
    parser.add_argument("--run", required=True, type=Path, help="the run directory")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, local)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any)")
    parser.add_argument(
        "--checkpoint", default="best", help="best, last, averaged, or a path (default: best)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        metavar="N",
        help="source tokens decoded together (default: the run's decoding.batch_tokens)",
    )
    parser.add_argument(
        "--batching",
        choices=BATCHING,
        default=ServeSettings.batching,
        help="groups: requests gathered in a window are decoded as one batch; continuous: "
        "each sentence joins the decode under way at the next step and is answered as soon "
        "as it finishes, the lowest latency at light load (default: %(default)s; on a CPU "
        "groups gave more sentences/s from 8 clients up, docs/serving.md)",
    )
    parser.add_argument(
        "--batch-window-ms",
        type=float,
        default=ServeSettings.batch_window_ms,
        metavar="MS",
        help="--batching groups: how long a request waits for others to share its batch "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=ServeSettings.workers,
        metavar="N",
        help="batches decoded at once, each in its own thread (default: %(default)s); on a CPU "
        "they share all cores but one, which is left to the HTTP server",
    )
    add_reference_flag(parser)
    add_engine_flags(parser)
    for name, meaning in LIMITS.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            default=getattr(ServeSettings, name),
            metavar="N",
            help=f"{meaning} (default: %(default)s)",
        )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, access log")
    return parser


def require_extra() -> None:
    """Refuse, in one line, to start without FastAPI and uvicorn."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise UserError(
            f"transformer-serve needs the serve extra ({error.name} is missing): {EXTRA}"
        ) from None


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (before the model loads, so a taken port fails fast)."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535 (got {port})")
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a name such as localhost
        family = socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it Nagle holds the second write of each answer for the client's delayed ACK (40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        reason = error.strerror or str(error)
        raise UserError(
            f"cannot listen on {host}:{port}: {reason}; choose another --port or --host"
        ) from None
    return sock


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    require_extra()
    import uvicorn

    from transformer.serve.app import create_app

    limits = {
        name: getattr(args, name)
        for name in [*LIMITS, "max_batch_tokens", "batching", "batch_window_ms", "workers"]
    }
    ServeSettings(**limits)  # refuse impossible limits before anything slow
    ctranslate2 = uses_ctranslate2(args)  # refuses an --export without --engine ctranslate2
    sock = listen(args.host, args.port)
    try:
        # The PyTorch model explains (its attention) whichever engine translates.
        pytorch = Namespace(**{**vars(args), "engine": "pytorch", "export": None})
        translator = load_translator(pytorch, "serve")
        checkpoint = str(resolve_checkpoint(args.run, args.checkpoint))
        settings = ServeSettings(**limits, checkpoint=checkpoint)
        engine = _ctranslate2_engine(args, translator, settings) if ctranslate2 else None
        app = create_app(translator, settings, engine)
        host, port = sock.getsockname()[:2]
        if not ipaddress.ip_address(host).is_loopback:
            logger.warning("listening on %s, beyond this machine: the server has no login", host)
        address = f"[{host}]" if ":" in host else host
        logger.info("serving %s on http://%s:%d/ (the API at /docs)", args.run, address, port)
        logging.getLogger("uvicorn.error").setLevel(logging.INFO)
        config = uvicorn.Config(app, log_config=None, access_log=args.verbose)
        server = uvicorn.Server(config)
        # Ctrl-C is how a server stops: uvicorn shuts down gracefully, then re-raises it.
        with contextlib.suppress(KeyboardInterrupt), _hangup_stops(server):
            server.run(sockets=[sock])
    finally:
        sock.close()
    return 0


def _ctranslate2_engine(
    args: argparse.Namespace, translator: Translator, settings: ServeSettings
) -> CTranslate2Engine:
    """--engine ctranslate2: the export transformer-translate would use, on the PyTorch
    model's device, `--workers` batches at once (each on the threads the policy gave one)."""
    from transformer.serve.ctranslate2_engine import CTranslate2Engine

    export = ctranslate2_translator(args, translator.device, settings.workers)
    max_tokens = settings.max_batch_tokens or translator.config.decoding.batch_tokens
    engine = CTranslate2Engine(export, settings, max_tokens)
    exported = Path(export.record.checkpoint)
    if exported.resolve() != Path(settings.checkpoint).resolve():
        logger.warning(
            "%s is an export of %s, not of --checkpoint %s: /explain shows the attention of "
            "another model than the one /translate decodes with",
            export.directory,
            exported,
            settings.checkpoint,
        )
    return engine


@contextlib.contextmanager
def _hangup_stops(server: uvicorn.Server) -> Iterator[None]:
    """SIGHUP (the terminal closed) stops the server gracefully, as uvicorn's SIGTERM does.

    uvicorn answers SIGINT and SIGTERM only; an interrupt raised inside its event loop
    instead (what `run_command` makes of SIGHUP) would leave it hanging.
    """
    if (
        threading.current_thread() is not threading.main_thread()  # only it may set handlers
        or signal.getsignal(signal.SIGHUP) is signal.SIG_IGN  # `nohup`: the server keeps running
    ):
        yield
        return
    previous = signal.signal(
        signal.SIGHUP, lambda signum, frame: server.handle_exit(signal.SIGTERM, frame)
    )
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


def main(argv: list[str] | None = None) -> int:
    """Entry point of transformer-serve; returns the exit code."""
    return run_command(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
