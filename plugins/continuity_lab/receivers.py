"""Local stand-ins for the services the sandbox cannot reach: an SMTP server and an HTTP receiver.

The real client code (the SMTP, Slack and PagerDuty providers, a status page client) talks to them
as it would to the real services; each SMTP message is written as a file under `mail/`, each HTTP
request as JSON under `webhooks/<service>/` (the first path segment: /slack/..., /pagerduty/...),
so tests and people can read exactly what was sent. A file `webhooks/<service>/.fail` makes that
service answer 500, for the delivery-failure paths. The same receiver also listens over HTTPS (a
self-signed certificate the sandbox makes, `tls_certificate`) for clients that refuse plain HTTP, as
PagerDuty's library does.

Run as `python -m continuity_lab.receivers --root DIR --smtp-port P --http-port Q` (the sandbox does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_counter_lock = threading.Lock()
_counter = [0]


def _next_name(suffix: str) -> str:
    with _counter_lock:
        _counter[0] += 1
        number = _counter[0]
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S.%f}-{number:06d}{suffix}"


def _write_atomically(path: Path, data: bytes) -> None:
    # Written under a temporary name, then renamed: a reader never sees half a message.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    partial.replace(path)


class MailHandler:
    """aiosmtpd handler: every accepted message to `directory` as an .eml with an envelope header."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's name)
        header = (f"X-Continuity-Envelope-From: {envelope.mail_from}\r\n"
                  f"X-Continuity-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n").encode()
        _write_atomically(self.directory / _next_name(".eml"), header + envelope.original_content)
        return "250 Message accepted for delivery"


def _webhook_handler(directory: Path) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            service = (self.path.strip("/").split("/", 1)[0] or "root").split("?")[0]
            try:
                parsed: Any = json.loads(body) if body else None
            except ValueError:
                parsed = body.decode(errors="replace")
            if (directory / service / ".fail").exists():
                self._answer(500, {"error": f"{service} is set to fail (.fail file)"})
                return
            _write_atomically(directory / service / _next_name(".json"), json.dumps({
                "received_at": datetime.now(timezone.utc).isoformat(), "method": self.command, "path": self.path,
                "headers": {k: v for k, v in self.headers.items() if k.lower() != "authorization"},
                "body": parsed}, indent=2).encode())
            if service == "slack":
                self._answer(200, "ok")  # what Slack's incoming webhooks answer
            elif service == "pagerduty":
                dedup = parsed.get("dedup_key") if isinstance(parsed, dict) else None
                self._answer(202, {"status": "success", "message": "Event processed", "dedup_key": dedup or _next_name("")})
            else:
                self._answer(200, {"status": "ok"})

        def _answer(self, status: int, payload: Any) -> None:
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_POST = do_PUT = do_PATCH = _record

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self._answer(200, {"status": "ok", "service": "continuity receivers"})

        def log_message(self, format: str, *args: Any) -> None:  # the files are the log
            return

    return Handler


def _authenticator(login: str, password: str) -> Any:
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def check(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
        ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == login \
            and auth_data.password.decode() == password
        return AuthResult(success=ok, handled=False)

    return check


def tls_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost (made once, kept): (certificate, key). The
    certificate is its own CA, so clients trust it by naming it as their CA bundle."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    certificate, key_file = directory / "receivers-cert.pem", directory / "receivers-key.pem"
    if certificate.exists() and key_file.exists():
        return certificate, key_file
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "continuity sandbox receivers")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    # The key is written 0600 before the certificate: a half-made pair is never taken for a whole one.
    key_file.touch(mode=0o600)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    _write_atomically(certificate, cert.public_bytes(serialization.Encoding.PEM))
    return certificate, key_file


READY_FILE = "ready.pid"


def serve(root: Path, *, smtp_port: int, http_port: int, smtp_login: str | None = None,
          smtp_password: str | None = None, https_port: int | None = None,
          tls: tuple[Path, Path] | None = None) -> None:
    from aiosmtpd.controller import Controller

    (root / "mail").mkdir(parents=True, exist_ok=True)
    (root / "webhooks").mkdir(parents=True, exist_ok=True)
    # With a login, SMTP AUTH is offered and checked (over plain TCP on loopback, as a relay would).
    auth = {"authenticator": _authenticator(smtp_login, smtp_password), "auth_require_tls": False,
            "auth_required": True} if smtp_login and smtp_password else {}
    smtp = Controller(MailHandler(root / "mail"), hostname="127.0.0.1", port=smtp_port, **auth)
    smtp.start()
    http = ThreadingHTTPServer(("127.0.0.1", http_port), _webhook_handler(root / "webhooks"))
    threading.Thread(target=http.serve_forever, daemon=True).start()
    servers = [http]
    if https_port and tls:
        import ssl

        https = ThreadingHTTPServer(("127.0.0.1", https_port), _webhook_handler(root / "webhooks"))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile=str(tls[0]), keyfile=str(tls[1]))
        https.socket = context.wrap_socket(https.socket, server_side=True)
        threading.Thread(target=https.serve_forever, daemon=True).start()
        servers.append(https)
    # Every port is bound now: say so in a file naming this process, because "something listens on the port" cannot
    # tell the receivers from another process that took one of their ports first.
    ready = root / READY_FILE
    ready.with_suffix(".tmp").write_text(str(os.getpid()))
    ready.with_suffix(".tmp").replace(ready)  # renamed, so a reader never sees it half-written
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        while not stop.is_set():
            time.sleep(0.2)
    finally:
        for server in servers:
            server.shutdown()
        smtp.stop()


def received(root: Path, service: str) -> list[dict[str, Any]]:
    """What the HTTP receiver recorded for `service`, oldest first."""
    return [json.loads(p.read_text()) for p in sorted((root / "webhooks" / service).glob("*.json"))]


def mails(root: Path) -> list[str]:
    """The messages the SMTP server accepted, oldest first (raw RFC 5322 text with the envelope header)."""
    return [p.read_text(errors="replace") for p in sorted((root / "mail").glob("*.eml"))]


def message_text(raw: str) -> str:
    """A received message's headers and its text parts decoded (providers send base64 MIME parts)."""
    import email
    from email import policy as email_policy

    message = email.message_from_string(raw, policy=email_policy.default)
    parts = [f"{name}: {value}" for name, value in message.items()]
    for part in message.walk():
        if part.get_content_maintype() == "text":
            parts.append(part.get_content())
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--smtp-port", required=True, type=int)
    parser.add_argument("--http-port", required=True, type=int)
    parser.add_argument("--https-port", type=int, help="also serve the webhooks over HTTPS on this port")
    parser.add_argument("--tls-dir", type=Path, help="where the self-signed certificate is (made if absent)")
    parser.add_argument("--smtp-login", help="require SMTP AUTH with this login (password: $CONTINUITY_SMTP_PASSWORD)")
    args = parser.parse_args()
    asyncio.set_event_loop(asyncio.new_event_loop())
    serve(args.root, smtp_port=args.smtp_port, http_port=args.http_port, smtp_login=args.smtp_login,
          smtp_password=os.environ.get("CONTINUITY_SMTP_PASSWORD"), https_port=args.https_port,
          tls=tls_certificate(args.tls_dir) if args.tls_dir and args.https_port else None)


if __name__ == "__main__":
    main()
