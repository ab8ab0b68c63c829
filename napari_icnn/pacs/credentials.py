"""Credentials and connection settings for a PACS, from the environment or a settings file.

Never from the command line (shell histories and process lists keep it). Secrets are kept out
of ``repr`` and of every message; a settings file holding one must be private to its owner
(``chmod 600``), as ``~/.pgpass`` must.

The environment: ``ICNN_PACS_USER`` + ``ICNN_PACS_PASSWORD`` (HTTP basic) or ``ICNN_PACS_TOKEN``
(bearer), ``ICNN_PACS_AET`` (our AE title). A settings file (``--pacs-config``, JSON or TOML)
takes the same fields in lower case, plus the retry settings, and an optional ``store`` table
with other credentials for the ``--store-to`` PACS::

    user = "icnn"
    password = "..."
    aet = "ICNN"
    retries = 3
    backoff = 0.5
    timeout = 30
    [store]
    token = "..."

Credentials in a settings file replace those of the environment.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_icnn.errors import ConfigError
from napari_icnn.pacs.retry import RetryPolicy
from napari_icnn.pacs.urls import check_ae_title

__all__ = ["Credentials", "PacsSettings", "load_settings", "ENV_USER", "ENV_PASSWORD", "ENV_TOKEN", "ENV_AET"]

ENV_USER = "ICNN_PACS_USER"
ENV_PASSWORD = "ICNN_PACS_PASSWORD"
ENV_TOKEN = "ICNN_PACS_TOKEN"
ENV_AET = "ICNN_PACS_AET"
DEFAULT_AET = "ICNN"

_SECRET_KEYS = ("password", "token")
_CREDENTIAL_KEYS = ("user", *_SECRET_KEYS)
_TOP_KEYS = frozenset({*_CREDENTIAL_KEYS, "aet", "retries", "backoff", "timeout", "store"})


@dataclass(frozen=True)
class Credentials:
    """How to sign in to a DICOMweb service: HTTP basic (user and password), a bearer token, or
    nothing. DIMSE has no sign-in; it identifies callers by AE title.

    Valid once built: a password needs a user and a user a password; a token excludes both.
    """

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    origin: str = ""
    """Where they came from (a variable or a file), for messages."""

    def __post_init__(self) -> None:
        where = self.origin or "PACS credentials"
        for name in _CREDENTIAL_KEYS:
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise ConfigError(f"{where}: {name} must be text")
            if not value:
                object.__setattr__(self, name, None)
            elif "\n" in value or "\r" in value:
                raise ConfigError(f"{where}: {name} must be one line")
        if self.token is not None and (self.user is not None or self.password is not None):
            raise ConfigError(f"{where}: give a user and password, or a token, not both")
        if (self.user is None) != (self.password is None):
            missing = "password" if self.password is None else "user"
            raise ConfigError(f"{where}: a {missing} is missing (basic sign-in needs both)")

    @property
    def kind(self) -> str:
        """``"basic"``, ``"bearer"`` or ``"none"``."""
        return "bearer" if self.token else "basic" if self.user else "none"

    @property
    def secrets(self) -> tuple[str, ...]:
        """The secret values, to make sure they appear in no output."""
        return tuple(s for s in (self.password, self.token) if s)


@dataclass(frozen=True)
class PacsSettings:
    """How to talk to the PACS: credentials, our AE title, retries, timeout.

    Valid once built: a valid AE title, a positive timeout.
    """

    credentials: Credentials = field(default_factory=Credentials)
    store_credentials: Credentials | None = None
    """For the ``--store-to`` PACS; ``None``: the same as ``credentials``."""
    aet: str = DEFAULT_AET
    """Our (calling) AE title for DIMSE."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float = 30.0
    """Seconds one request may wait for an answer."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "aet", check_ae_title(self.aet, "our AE title (aet)"))
        t = self.timeout
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t <= 3600:
            raise ConfigError(f"PACS timeout: must be seconds in (0, 3600] (got {t!r})")
        object.__setattr__(self, "timeout", float(t))

    def for_store(self) -> Credentials:
        return self.store_credentials if self.store_credentials is not None else self.credentials

    @property
    def secrets(self) -> tuple[str, ...]:
        found = self.credentials.secrets + (self.store_credentials.secrets if self.store_credentials else ())
        return tuple(dict.fromkeys(found))


def load_settings(config: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> PacsSettings:
    """Settings from the environment, overridden by the settings file ``config`` when given.

    Raises
    ------
    ConfigError
        The file is missing, unreadable, malformed, has unknown fields, or holds a secret while
        other users can read it; credentials are incomplete or ambiguous.
    """
    env = os.environ if env is None else env
    creds = _credentials({k: env.get(v) for k, v in (("user", ENV_USER), ("password", ENV_PASSWORD),
                                                      ("token", ENV_TOKEN))},
                         f"{ENV_USER}/{ENV_PASSWORD}/{ENV_TOKEN}")
    aet = env.get(ENV_AET) or DEFAULT_AET
    if config is None:
        return PacsSettings(credentials=creds, aet=aet)
    path = Path(config)
    doc = _read(path)
    where = f"--pacs-config {path}"
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(_TOP_KEYS))})")
    store = doc.get("store")
    if store is not None and (not isinstance(store, dict) or set(store) - set(_CREDENTIAL_KEYS)):
        raise ConfigError(f"{where}: 'store' must be a table of {', '.join(_CREDENTIAL_KEYS)}")
    _check_private(path, doc)
    try:
        if any(k in doc for k in _CREDENTIAL_KEYS):
            creds = _credentials(doc, str(path))
        return PacsSettings(
            credentials=creds,
            store_credentials=_credentials(store, f"{path} [store]") if store else None,
            aet=doc.get("aet", aet),
            retry=RetryPolicy(**{k: doc[k] for k in ("retries", "backoff") if k in doc}),
            timeout=doc.get("timeout", 30.0),
        )
    except ConfigError as err:
        text = str(err)
        raise ConfigError(text if str(path) in text else f"{where}: {text}") from None


def _credentials(values: Mapping[str, Any], origin: str) -> Credentials:
    return Credentials(**{k: (values.get(k) or None) for k in _CREDENTIAL_KEYS}, origin=origin)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"--pacs-config {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"--pacs-config {path}: cannot be read ({exc.strerror or exc})") from None
    text = data.decode("utf-8", errors="replace")
    try:
        if path.suffix.lower() == ".toml" or not text.lstrip().startswith("{"):
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover
                import tomli as tomllib
            doc = tomllib.loads(text)
        else:
            doc = json.loads(text)
    except ValueError as exc:
        # The parsers quote the offending text, which may be a password: say where, not what.
        line = getattr(exc, "lineno", None) or next(iter(re.findall(r"line (\d+)", str(exc))), None)
        where = f"line {line}" if line else "its syntax"
        raise ConfigError(f"--pacs-config {path}: not valid JSON or TOML (see {where})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"--pacs-config {path}: must hold a table of settings")
    return doc


def _check_private(path: Path, doc: Mapping[str, Any]) -> None:
    """Refuse a file holding a secret that users other than its owner can read or change."""
    if os.name != "posix":  # pragma: no cover - permissions are ACLs there
        return
    store = doc.get("store") or {}
    if not any(doc.get(k) or store.get(k) for k in _SECRET_KEYS):
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"--pacs-config {path}: holds a secret but other users can access it (mode {mode:04o}); "
            f"make it private with: chmod 600 {path}"
        )
