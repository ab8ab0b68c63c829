"""PACS addresses as the command line takes them.

``dicomweb+http://HOST:PORT/PATH`` (or ``dicomweb+https://``) names a DICOMweb service by its
root, the part before ``/studies``; ``dimse://AET@HOST:PORT`` names a DICOM node by the AE title
it answers to. Credentials never go into an address (it ends up in shell histories and process
lists): they come from the environment or a settings file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from napari_icnn.errors import ConfigError

__all__ = ["PacsUrl", "parse_pacs_url", "check_ae_title", "redact_url"]

_DICOMWEB_SCHEMES = {"dicomweb+http": "http", "dicomweb+https": "https"}
_FORMS = "dicomweb+http(s)://HOST:PORT/PATH or dimse://AET@HOST:PORT"


def check_ae_title(aet: str, what: str = "AE title") -> str:
    """``aet`` when it is a valid DICOM AE title (1-16 characters, no backslash or control
    characters, not only spaces); leading and trailing spaces are not significant.

    Raises
    ------
    ConfigError
        Naming ``what`` and the rule it breaks.
    """
    text = str(aet).strip(" ")
    if not text:
        raise ConfigError(f"{what}: must not be empty")
    if len(text) > 16:
        raise ConfigError(f"{what} {text!r}: longer than 16 characters")
    if any(c == "\\" or ord(c) < 32 or ord(c) > 126 for c in text):
        raise ConfigError(f"{what} {text!r}: only printable ASCII without backslash is allowed")
    return text


def redact_url(text: str) -> str:
    """``text`` with any ``user:password@`` part replaced, so it can be quoted in a message."""
    return re.sub(r"(://)[^/@\s]*@", r"\1***@", str(text))


@dataclass(frozen=True)
class PacsUrl:
    """A parsed PACS address. Valid once built: a known protocol, a host, a port in 1-65535, and
    a called AE title for DIMSE."""

    protocol: str
    """``"dicomweb"`` or ``"dimse"``."""
    host: str
    port: int
    path: str = ""
    """DICOMweb root path (``/dicom-web``), without a trailing slash."""
    scheme: str = "http"
    """``http`` or ``https`` (DICOMweb)."""
    aet: str = ""
    """Called AE title (DIMSE)."""

    def __post_init__(self) -> None:
        if self.protocol not in ("dicomweb", "dimse"):
            raise ValueError(f"PacsUrl.protocol must be 'dicomweb' or 'dimse'; got {self.protocol!r}")
        if not self.host:
            raise ValueError("PacsUrl.host must not be empty")
        if not 0 < int(self.port) < 65536:
            raise ValueError(f"PacsUrl.port must be in 1-65535; got {self.port!r}")
        if self.protocol == "dimse":
            check_ae_title(self.aet, "PacsUrl.aet")
        elif self.scheme not in ("http", "https"):
            raise ValueError(f"PacsUrl.scheme must be 'http' or 'https'; got {self.scheme!r}")

    @property
    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The DICOMweb root as an HTTP(S) URL."""
        return f"{self.scheme}://{self._netloc}{self.path}"

    def __str__(self) -> str:
        if self.protocol == "dimse":
            return f"dimse://{self.aet}@{self._netloc}"
        return f"dicomweb+{self.base_url}"


def parse_pacs_url(text: str, option: str = "--from") -> PacsUrl:
    """Parse ``dicomweb+http(s)://HOST[:PORT]/PATH`` or ``dimse://AET@HOST:PORT``.

    Raises
    ------
    ConfigError
        Naming ``option`` and what is wrong; credentials in the address are refused (and not
        repeated in the message).
    """
    raw = str(text or "").strip()
    shown = redact_url(raw)
    if not raw:
        raise ConfigError(f"{option}: give a PACS address ({_FORMS})")
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{option} {shown}: not a PACS address ({exc})") from None
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if port == 0:
        raise ConfigError(f"{option} {shown}: port 0 is not a port")
    if scheme in _DICOMWEB_SCHEMES:
        if parts.username is not None or parts.password is not None:
            raise ConfigError(
                f"{option} {shown}: credentials do not belong in the address (shell histories and "
                "process lists keep it); set ICNN_PACS_USER and ICNN_PACS_PASSWORD (or ICNN_PACS_TOKEN), "
                "or use --pacs-config FILE"
            )
        if parts.query or parts.fragment:
            raise ConfigError(f"{option} {shown}: the DICOMweb root takes no query or fragment")
        if not host:
            raise ConfigError(f"{option} {shown}: no host")
        http = _DICOMWEB_SCHEMES[scheme]
        path = parts.path.rstrip("/")
        if path.endswith("/studies"):
            raise ConfigError(f"{option} {shown}: give the DICOMweb root, without /studies")
        return PacsUrl("dicomweb", host, port or (443 if http == "https" else 80), path, scheme=http)
    if scheme == "dimse":
        if parts.password is not None:
            raise ConfigError(f"{option} {shown}: DIMSE addresses are AET@HOST:PORT, with no password")
        if not parts.username:
            raise ConfigError(f"{option} {shown}: name the PACS's AE title, as in dimse://AET@HOST:PORT")
        if not host or port is None:
            raise ConfigError(f"{option} {shown}: give the host and the DICOM port, as in dimse://AET@HOST:PORT")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError(f"{option} {shown}: a DIMSE address has nothing after the port")
        aet = check_ae_title(unquote(parts.username), f"{option} AE title")
        return PacsUrl("dimse", host, port, aet=aet)
    raise ConfigError(f"{option} {shown}: unknown kind of address; use {_FORMS}")
