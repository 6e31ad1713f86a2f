"""Mutual TLS between services, from the TLS_* settings every service has.

With `tls_cert_file` and `tls_key_file` set, the server listens with TLS; with `tls_ca_file`
also set it requires callers to present a certificate that CA signed. The same files make the
service's own outgoing channels present its certificate and verify the peer against the CA.
Half a configuration (a certificate without its key, a CA without a certificate) stops the
service at start-up with a message naming the missing setting.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from libs.runtime.settings import ServiceSettings


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise RuntimeError(f"cannot read {what} {path!r}: {exc.strerror}") from None


def _check(settings: ServiceSettings) -> bool:
    cert, key, ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file
    if not (cert or key or ca):
        return False
    prefix = str(settings.model_config.get("env_prefix", "LLMESH_"))
    if not cert or not key:
        missing = "TLS_KEY_FILE" if cert else "TLS_CERT_FILE"
        raise RuntimeError(f"TLS is half configured: set {prefix}{missing} too (or neither)")
    return True


def server_credentials(settings: ServiceSettings) -> grpc.ServerCredentials | None:
    """Server TLS credentials, or None when TLS is off."""
    if not _check(settings):
        return None
    pair = [(_read(settings.tls_key_file, "TLS key"), _read(settings.tls_cert_file, "TLS certificate"))]
    if settings.tls_ca_file:
        ca = _read(settings.tls_ca_file, "TLS CA bundle")
        return grpc.ssl_server_credentials(pair, root_certificates=ca, require_client_auth=True)
    return grpc.ssl_server_credentials(pair)


def channel_credentials(settings: ServiceSettings) -> grpc.ChannelCredentials | None:
    """Client TLS credentials presenting this service's certificate, or None when TLS is off."""
    if not _check(settings):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(settings.tls_ca_file, "TLS CA bundle") if settings.tls_ca_file else None,
        private_key=_read(settings.tls_key_file, "TLS key"),
        certificate_chain=_read(settings.tls_cert_file, "TLS certificate"),
    )
