"""Kafka secrets: read from an environment variable or a file when a client is built, never
held in a config, and masked wherever they could show (log records, reprs, printed text).

See docs/secrets.md for how each secret reaches the nodes.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

from reidstream.config import ConfigError

log = logging.getLogger(__name__)


class Secret(str):
    """A secret's value for kafka-python, shown as ``'***'`` by repr: kafka-python logs its
    whole client config at DEBUG, and a traceback or a printed dict shows reprs."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"


_SECRETS: dict[str, None] = {}  # every secret value this process read (ordered, bounded)
_MAX_SECRETS = 64  # rotated OAuth tokens add up; the oldest long expired
_masking_installed = False
_warned_readable: set[str] = set()


def read_secret(key: str, env_name: str, file_path: str, required: bool = True) -> Secret | None:
    """The secret ``kafka.<key>`` from ``file_path`` if set, else from ``$env_name``.

    A file wins because naming one is deliberate, while the env var has a default name that
    may be set for some other purpose. Trailing newlines (``echo pw > file``) are dropped.
    """
    if file_path:
        path = Path(file_path).expanduser()
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except FileNotFoundError:
            raise ConfigError(f"kafka.{key}_file: no such file {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"kafka.{key}_file: cannot read {path}: {exc}") from None
        if not value:
            raise ConfigError(f"kafka.{key}_file: {path} is empty")
        _warn_if_others_can_read(path, key)
        return register_secret(value)
    value = os.environ.get(env_name, "") if env_name else ""
    if value:
        return register_secret(value)
    if not required:
        return None
    where = f"the environment variable ${env_name} (kafka.{key}_env)" if env_name else (
        f"an environment variable named by kafka.{key}_env"
    )
    raise ConfigError(
        f"kafka.{key}: not found; put it in {where} or in a file named by kafka.{key}_file "
        "(never in a config file or on the command line)"
    )


def _warn_if_others_can_read(path: Path, key: str) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & 0o077 and str(path) not in _warned_readable:
        _warned_readable.add(str(path))  # once: every reconnecting client reads it again
        log.warning(
            "kafka.%s_file %s can be read by other users (mode %o); chmod 600 it",
            key, path, mode & 0o777,
        )


def register_secret(value: str) -> Secret:
    """Remember ``value`` so every log record this process makes from now on masks it."""
    _SECRETS.pop(value, None)
    _SECRETS[value] = None
    while len(_SECRETS) > _MAX_SECRETS:
        _SECRETS.pop(next(iter(_SECRETS)))
    _install_log_masking()
    return Secret(value)


def mask_secrets(text: str) -> str:
    """``text`` with every secret read so far, and its escaped forms, replaced by ``***``.

    Escaped forms: kafka-python logs SASL requests at DEBUG, with the PLAIN password or the
    OAuth token inside a bytes repr.
    """
    for value in list(_SECRETS):
        for form in _forms(value):
            if form in text:
                text = text.replace(form, "***")
    return text


def _forms(value: str) -> set[str]:
    forms = {value, repr(value)[1:-1], repr(value.encode("utf-8"))[2:-1]}
    return forms | {f.replace("\\'", "'") for f in forms}  # a repr escapes ' only sometimes


def _install_log_masking() -> None:
    """Mask secrets in every log record of this process, whatever its logger or handler.

    A record factory rather than a handler filter: it also covers handlers set up later (Ray's,
    in actors) and kafka-python's child loggers, which logger-level filters would miss.
    """
    global _masking_installed
    if _masking_installed:
        return
    _masking_installed = True
    make_record = logging.getLogRecordFactory()

    def masked_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if _SECRETS:
            _mask_record(record)
        return record

    logging.setLogRecordFactory(masked_record)


def _mask_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a broken format string: logging reports it itself
        return
    masked = mask_secrets(message)
    if masked != message:
        record.msg, record.args = masked, None
    if record.exc_info and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        masked = mask_secrets(text)
        if masked != text:
            record.exc_text = masked


def oauth_token_provider(env_name: str, file_path: str) -> Any:
    """A kafka-python token provider that reads the token anew on every (re)connection."""
    return _token_provider_class()(env_name, file_path)


@functools.cache
def _token_provider_class() -> type:
    try:
        from kafka.net.sasl.oauth import AbstractTokenProvider
    except ImportError:  # kafka-python 2.x kept it here
        from kafka.sasl.oauth import AbstractTokenProvider

    class TokenFromEnvOrFile(AbstractTokenProvider):
        """OAUTHBEARER token from ``kafka.sasl_oauth_token_file`` or its env var, read at each
        connection so a refreshed file (or a restarted sidecar's env) takes effect at once."""

        def __init__(self, env_name: str, file_path: str) -> None:
            self.env_name, self.file_path = env_name, file_path

        def token(self) -> str:
            token = read_secret("sasl_oauth_token", self.env_name, self.file_path)
            return str(token)  # a plain str: kafka-python formats it into the request

        def __repr__(self) -> str:
            return f"TokenFromEnvOrFile(env={self.env_name!r}, file={self.file_path!r})"

    return TokenFromEnvOrFile
