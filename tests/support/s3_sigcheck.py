"""A SigV4-checking HTTP proxy in front of moto (tests only).

moto accepts any signature. This proxy checks every request the way S3 does before passing
it on: a presigned request (X-Amz-Signature in the query) must verify for its method, key
and query and be unexpired; a header-signed request (Authorization: AWS4-HMAC-SHA256) must
verify for its signed headers and payload hash; anything else (no signature) is refused.
A refusal is a 403 with an S3-style XML body. The secrets it knows: `keys` (access key id ->
secret), the ones the trusted side signs with.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import http.server
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

ALGO = "AWS4-HMAC-SHA256"


def _quote(s: str) -> str:
    return urllib.parse.quote(s, safe="-_.~")


def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    k = hmac.new(f"AWS4{secret}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


def _canonical_query(raw: str, drop: str | None) -> str:
    pairs = urllib.parse.parse_qsl(raw, keep_blank_values=True)
    return "&".join(
        f"{_quote(k)}={_quote(v)}" for k, v in sorted(pairs) if k != drop
    )  # fmt: skip


def verify(
    method: str, target: str, headers: dict[str, str], keys: dict[str, str], now: datetime
) -> str | None:
    """Why the request does not verify, or None. `headers`: lowercase names."""
    path, _, raw_query = target.partition("?")
    query = dict(urllib.parse.parse_qsl(raw_query, keep_blank_values=True))
    if "X-Amz-Signature" in query:
        if query.get("X-Amz-Algorithm") != ALGO:
            return "unknown algorithm"
        credential, amz_date = query.get("X-Amz-Credential", ""), query.get("X-Amz-Date", "")
        signed, signature = query.get("X-Amz-SignedHeaders", ""), query["X-Amz-Signature"]
        try:
            expires = int(query.get("X-Amz-Expires", ""))
            at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            return "bad date or expiry"
        if now > at + timedelta(seconds=expires):
            return "expired"
        payload = "UNSIGNED-PAYLOAD"
        canonical_query = _canonical_query(raw_query, "X-Amz-Signature")
    elif headers.get("authorization", "").startswith(ALGO):
        fields = dict(
            p.strip().split("=", 1) for p in headers["authorization"][len(ALGO) :].split(",")
        )
        credential, signed = fields.get("Credential", ""), fields.get("SignedHeaders", "")
        signature, amz_date = fields.get("Signature", ""), headers.get("x-amz-date", "")
        payload = headers.get("x-amz-content-sha256", "")
        canonical_query = _canonical_query(raw_query, None)
        if not payload:
            return "no payload hash"
    else:
        return "no signature"
    parts = credential.split("/")
    if len(parts) != 5 or parts[0] not in keys:
        return "unknown access key"
    access, date, region, service, _ = parts
    canonical_headers = "".join(
        f"{h}:{' '.join(headers.get(h, '').split())}\n" for h in signed.split(";") if h
    )
    canonical = "\n".join(
        [method, path, canonical_query, canonical_headers, signed, payload]
    )  # fmt: skip
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join([ALGO, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    want = hmac.new(
        _signing_key(keys[access], date, region, service), to_sign.encode(), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(want, signature):
        return "signature does not match"
    return None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: tuple[str, int]
    keys: dict[str, str]
    refused: list[str]

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        body = self._body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        why = verify(self.command, self.path, headers, self.keys, datetime.now(UTC))
        if why is not None:
            self.refused.append(f"{self.command} {self.path.split('?')[0]}: {why}")
            msg = f"<Error><Code>AccessDenied</Code><Message>{why}</Message></Error>".encode()
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(msg)
            return
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        out_headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
        out_headers["Content-Length"] = str(len(body))
        conn.request(self.command, self.path, body=body, headers=out_headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "content-length", "connection", "server", "date"):  # fmt: skip
                self.send_header(k, v)
        # a HEAD's length is the object's (what s3fs reads a file's size from)
        length = resp.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


@contextmanager
def sigcheck_proxy(upstream_url: str, keys: dict[str, str]) -> Iterator[tuple[str, list[str]]]:
    """A checking proxy in front of `upstream_url` (http://host:port): (its URL, the list
    of refusals it made, one line each)."""
    u = urllib.parse.urlsplit(upstream_url)
    refused: list[str] = []
    handler = type(
        "Handler",
        (_Handler,),
        {"upstream": (u.hostname, u.port), "keys": dict(keys), "refused": refused},
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", refused
    finally:
        server.shutdown()
        server.server_close()
