"""Webhooks and the pre-upload hook, against real HTTP receivers on loopback (a threaded http.server here).

A webhook gets the events it asked for as signed JSON, retried after a 5xx;
with a spool, an event not yet delivered survives a restart of stor. The
pre-upload hook is asked before an upload is taken: its refusal reaches
the client as 403 with its reason, nothing is stored, and a hook that does
not answer in time refuses or accepts as configured.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import AUTH, StorServer, free_port, layout_path, pair_config, wait_for

SECRET = "webhook-secret-0123456789"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP server that records each POST and answers with the next of `answers` (then 200)."""

    port: int = 0
    answers: list[tuple[int, str]] = field(default_factory=list)
    delay: float = 0.0  # seconds it takes to answer: a slow receiver
    received: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                if receiver.delay:
                    time.sleep(receiver.delay)  # the receiver being slow, not the test waiting
                status, text = receiver.answers.pop(0) if receiver.answers else (200, "ok")
                data = text.encode()
                self.send_response(status)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = self.port or free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def _server(tmp_path: Path, events: dict[str, Any], workers: int = 2) -> StorServer:
    mirrors = (tmp_path / "m1", tmp_path / "m2")
    for m in mirrors:
        m.mkdir(exist_ok=True)
    return StorServer(workdir=tmp_path, config=pair_config(mirrors, events=events), workers=workers).start()


def _blob(size: int = 1000) -> tuple[bytes, str]:
    data = os.urandom(size)
    return data, hashlib.sha256(data).hexdigest()


def test_a_webhook_gets_signed_events_and_retries_after_a_5xx(tmp_path: Path, receiver: Receiver) -> None:
    receiver.answers = [(500, "busy"), (503, "still busy")]
    wants_duplicates = Receiver().start()
    server = _server(tmp_path, {"webhooks": [
        {"url": receiver.url, "events": ["blob.created"], "secret": SECRET},
        {"url": wants_duplicates.url, "events": ["blob.duplicate"]},
    ]})
    try:
        data, sha = _blob()
        assert httpx.post(f"{server.url}/{sha}", content=data, auth=AUTH).status_code == 201
        wait_for(lambda: len(receiver.received) == 3, 20, "the delivery, retried twice")
        first, _, last = receiver.received
        assert first.body == last.body and first.headers["stor-delivery"] == last.headers["stor-delivery"]
        event = json.loads(last.body)
        assert event["event"] == "blob.created" and event["sha256"] == sha and event["size"] == len(data)
        assert last.headers["stor-event"] == "blob.created"
        expected = "sha256=" + hmac.new(SECRET.encode(), last.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(last.headers["stor-signature"], expected)
        assert not wants_duplicates.received  # it asked for duplicates only
        assert httpx.post(f"{server.url}/{sha}", content=data, auth=AUTH).status_code == 200
        wait_for(lambda: len(wants_duplicates.received) == 1, 20, "the duplicate's delivery")
        assert json.loads(wants_duplicates.received[0].body)["event"] == "blob.duplicate"
        assert "stor-signature" not in wants_duplicates.received[0].headers  # no secret, no signature
        status = httpx.get(f"{server.url}/status", headers={"Accept": "application/json"}).json()
        hooks = status["events"]["webhooks"]
        assert SECRET not in json.dumps(status) and {h["url"] for h in hooks} == {receiver.url, wants_duplicates.url}
    finally:
        server.stop()
        wants_duplicates.stop()
    assert len(receiver.received) == 3  # delivered once it was answered 200: not again


def test_a_spooled_event_survives_a_restart(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    receiver = Receiver(port=free_port())  # not listening yet: every delivery attempt fails
    events = {"webhooks": [{"url": receiver.url, "secret": SECRET}], "webhook_spool": str(spool)}
    server = _server(tmp_path, events, workers=1)
    data, sha = _blob()
    try:
        assert httpx.post(f"{server.url}/{sha}", content=data, auth=AUTH).status_code == 201
        wait_for(lambda: len(list(spool.glob("webhook-0/worker-*/*.json"))) == 1, 10, "the event spooled")
    finally:
        server.stop()
    assert len(list(spool.glob("webhook-0/worker-*/*.json"))) == 1  # still there: not delivered
    receiver.start()
    server = _server(tmp_path, events, workers=1)
    try:
        wait_for(lambda: len(receiver.received) == 1, 20, "the spooled event delivered after the restart")
        event = json.loads(receiver.received[0].body)
        assert event["event"] == "blob.created" and event["sha256"] == sha
        wait_for(lambda: not list(spool.glob("webhook-0/worker-*/*.json")), 10, "the spool emptied")
    finally:
        server.stop()
        receiver.stop()


def _hook_config(receiver: Receiver, **extra: Any) -> dict[str, Any]:
    return {"pre_upload_hook": {"url": receiver.url, "timeout": 1, **extra}}


def test_the_pre_upload_hook_refuses_and_nothing_is_kept(tmp_path: Path, receiver: Receiver) -> None:
    server = _server(tmp_path, _hook_config(receiver))
    try:
        data, sha = _blob()
        receiver.answers = [(451, "sample embargoed by policy\nsecond line")]
        refused = httpx.post(f"{server.url}/{sha}", content=data, auth=AUTH, headers={"X-Filename": "a.exe"})
        assert refused.status_code == 403
        assert refused.text == "Refused by the pre-upload hook (451): sample embargoed by policy"
        asked = json.loads(receiver.received[0].body)
        assert asked["sha256"] == sha and asked["size"] == len(data) and asked["user"] == AUTH[0]
        assert asked["filename"] == "a.exe" and asked["via"] == "blob"
        assert httpx.get(f"{server.url}/{sha}").status_code == 404
        assert not layout_path(tmp_path / "m1", sha).exists() and not layout_path(tmp_path / "m2", sha).exists()
        # tus: the creation is refused, no upload made.
        receiver.answers = [(403, "no")]
        created = httpx.post(f"{server.url}/files/", auth=AUTH, headers={
            "Tus-Resumable": "1.0.0", "Upload-Length": "10"})
        assert created.status_code == 403 and "Refused by the pre-upload hook (403): no" in created.text
        assert json.loads(receiver.received[1].body)["via"] == "tus"
        # Accepted: stored as ever.
        assert httpx.post(f"{server.url}/{sha}", content=data, auth=AUTH).status_code == 201
    finally:
        server.stop()


@pytest.mark.parametrize("on_timeout", ["refuse", "accept"])
def test_a_pre_upload_hook_that_does_not_answer(tmp_path: Path, receiver: Receiver, on_timeout: str) -> None:
    receiver.delay = 3.0  # longer than the hook's timeout of 1 s
    server = _server(tmp_path, _hook_config(receiver, on_timeout=on_timeout))
    try:
        data, sha = _blob()
        answer = httpx.post(f"{server.url}/{sha}", content=data, auth=AUTH, timeout=30)
        if on_timeout == "refuse":
            assert answer.status_code == 403 and "did not answer within 1 s" in answer.text
            assert httpx.get(f"{server.url}/{sha}").status_code == 404
        else:
            assert answer.status_code == 201
            assert httpx.get(f"{server.url}/{sha}").content == data
        assert "pre-upload hook" in server.log_text()
    finally:
        server.stop()


def test_the_pre_upload_hook_is_asked_by_the_s3_api_too(tmp_path: Path, receiver: Receiver) -> None:
    from botocore.exceptions import ClientError

    from s3api_fixture import BUCKET, WRITER_KEY, boto3_client, s3_api_config

    mirrors = (tmp_path / "m1", tmp_path / "m2")
    for m in mirrors:
        m.mkdir()
    s3_port = free_port()
    config = s3_api_config(mirrors) | {"events": _hook_config(receiver)}
    server = StorServer(workdir=tmp_path, config=config, workers=1, args=["--s3-port", str(s3_port)]).start()
    try:
        client = boto3_client(s3_port)
        data, sha = _blob()
        receiver.answers = [(403, "not this one"), (403, "nor in parts")]
        with pytest.raises(ClientError) as e:
            client.put_object(Bucket=BUCKET, Key=sha, Body=data)
        assert e.value.response["Error"]["Code"] == "AccessDenied"
        assert "Refused by the pre-upload hook (403): not this one" in e.value.response["Error"]["Message"]
        with pytest.raises(ClientError) as e:
            client.create_multipart_upload(Bucket=BUCKET, Key=sha)
        assert e.value.response["Error"]["Code"] == "AccessDenied"
        asked = [json.loads(r.body) for r in receiver.received]
        assert [(a["via"], a["user"], a["sha256"]) for a in asked] == [("s3", WRITER_KEY, sha)] * 2
        assert httpx.get(f"{server.url}/{sha}").status_code == 404
        client.put_object(Bucket=BUCKET, Key=sha, Body=data)  # accepted now
        assert httpx.get(f"{server.url}/{sha}").content == data
    finally:
        server.stop()
