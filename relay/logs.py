"""Logging: the one structlog configuration, JSON in production, console on a terminal."""

from __future__ import annotations

import logging
import sys

import structlog

from relay.config import Settings


def configure(settings: Settings) -> None:
    """Route structlog and the standard library (uvicorn, aiohttp) through one renderer."""
    level = getattr(logging, settings.log_level.upper())
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer()
        if settings.log_format == "console"
        else structlog.processors.JSONRenderer()
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _drop_color_message,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Access logs would print every callback twice; relay writes its own line per callback.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def _drop_color_message(
    logger: object, name: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    # uvicorn attaches an ANSI-coloured copy of each message; the renderer has the plain one.
    event.pop("color_message", None)
    return event


log = structlog.get_logger("relay")
