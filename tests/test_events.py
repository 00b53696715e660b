"""Events to a real RabbitMQ (a private node the tests start): the original's messages and stor's JSON events.

The original published the sha of each GET (and HEAD: Mojolicious routes a
HEAD to the GET handler) of a valid sha, found or not, as the message body,
with rabbitmq_uri's routing key, on a durable topic exchange. stor does the
same, from an outbox per worker, and adds JSON events with routing keys of
their own names. A broker outage never fails a request.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import AUTH, StorServer, pair_config, wait_for
from rabbitmq import Consumer


def _uri(rabbitmq: Any, exchange: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"exchange": exchange, **params}.items())
    return f"{rabbitmq.url}?{query}"


@pytest.fixture
def exchange() -> str:
    return f"stor-test-{secrets.token_hex(4)}"


def _server(tmp_path: Path, uri: str, workers: int = 2, **events: Any) -> StorServer:
    mirrors = (tmp_path / "m1", tmp_path / "m2")
    for m in mirrors:
        m.mkdir(exist_ok=True)
    config = pair_config(mirrors, rabbitmq_uri=uri, **({"events": events} if events else {}))
    return StorServer(workdir=tmp_path, config=config, workers=workers).start()


@pytest.fixture
def served(tmp_path: Path, rabbitmq: Any, exchange: str) -> Iterator[StorServer]:
    server = _server(tmp_path, _uri(rabbitmq, exchange, routing_key="sample.requested"))
    try:
        yield server
    finally:
        server.stop()


def _blob(size: int = 1000) -> tuple[bytes, str]:
    data = os.urandom(size)
    return data, hashlib.sha256(data).hexdigest()


def _status(server: StorServer) -> dict[str, Any]:
    return dict(httpx.get(f"{server.url}/status", headers={"Accept": "application/json"}, timeout=10).json())


def _assert_a_request_publishes(server: StorServer, url: str, exchange: str, method: str = "GET") -> None:
    """A request for a sha not stored (404) reaches a consumer bound on url's broker with its sha."""
    consumer = Consumer(url, exchange, "sha")
    try:
        _, sha = _blob()
        assert httpx.request(method, f"{server.url}/{sha}").status_code == 404
        assert consumer.bodies(1, timeout=20) == [sha.encode()]
    finally:
        consumer.close()


def test_get_and_head_publish_the_requested_sha_as_the_original(
    served: StorServer, rabbitmq: Any, exchange: str
) -> None:
    consumer = Consumer(rabbitmq.url, exchange, "sample.requested")
    try:
        data, sha = _blob()
        assert httpx.get(f"{served.url}/{'z' * 64}").status_code == 404  # not a sha: nothing published
        assert httpx.get(f"{served.url}/{sha}").status_code == 404  # a valid sha, not stored: published
        assert httpx.post(f"{served.url}/{sha}", content=data, auth=AUTH).status_code == 201
        assert httpx.get(f"{served.url}/{sha.upper()}").content == data
        assert httpx.head(f"{served.url}/{sha}").status_code == 200
        got = consumer.messages(3, timeout=20)
        assert [m.body for m in got] == [sha.encode(), sha.upper().encode(), sha.encode()]
        assert {m.routing_key for m in got} == {"sample.requested"}
    finally:
        consumer.close()
    state = _status(served)["events"]["rabbitmq"]
    assert state["state"] == "up" and state["exchange"] == exchange and "guest:" not in json.dumps(state)


def test_writes_publish_json_events(served: StorServer, rabbitmq: Any, exchange: str) -> None:
    consumer = Consumer(rabbitmq.url, exchange, "blob.*")
    try:
        data, sha = _blob(4321)
        assert httpx.post(f"{served.url}/{sha}", content=data, auth=AUTH).status_code == 201
        assert httpx.post(f"{served.url}/{sha}", content=data, auth=AUTH).status_code == 200
        got = consumer.messages(2, timeout=20)
    finally:
        consumer.close()
    assert [m.routing_key for m in got] == ["blob.created", "blob.duplicate"]
    created, duplicate = (json.loads(m.body) for m in got)
    assert created["event"] == "blob.created" and created["sha256"] == sha and created["size"] == 4321
    assert created["node"] and isinstance(created["time"], float)
    assert duplicate["event"] == "blob.duplicate" and duplicate["sha256"] == sha


def test_a_broker_outage_fails_no_request_and_publishing_resumes_by_itself(
    tmp_path: Path, rabbitmq: Any, exchange: str
) -> None:
    server = _server(tmp_path, _uri(rabbitmq, exchange), workers=1, queue_size=5, rabbitmq_events=[])
    try:
        # A durable queue: it is there again as the broker comes back, before stor's publisher reconnects
        # (an exclusive one made after the restart could bind after stor had already sent its outbox).
        queue = f"{exchange}-outage"
        consumer = Consumer(rabbitmq.url, exchange, "sha", durable_queue=queue)
        _, first = _blob()
        assert httpx.get(f"{server.url}/{first}").status_code == 404
        assert consumer.bodies(1, timeout=20) == [first.encode()]
        consumer.close()
        rabbitmq.stop()
        try:
            wait_for(lambda: _status(server)["events"]["rabbitmq"]["state"] == "down", 30, "the outage noticed")
            shas = [_blob()[1] for _ in range(20)]
            for sha in shas:  # the requests are answered as ever
                assert httpx.get(f"{server.url}/{sha}", timeout=5).status_code == 404
            state = _status(server)["events"]["rabbitmq"]
            assert state["queued"] == 5 and state["dropped"] == 15
            assert _status(server)["status"] == "ok"  # the broker is no storage: the node serves
        finally:
            rabbitmq.start()
        consumer = Consumer(rabbitmq.url, exchange, "sha", durable_queue=queue)
        try:
            wait_for(lambda: _status(server)["events"]["rabbitmq"]["state"] == "up", 60, "the reconnection")
            _, after = _blob()
            assert httpx.get(f"{server.url}/{after}").status_code == 404
            # What waited in the outbox went out once the broker was back, then the new request's.
            assert consumer.bodies(6, timeout=20) == [sha.encode() for sha in shas[:5]] + [after.encode()]
        finally:
            consumer.delete_queue()
        log = server.log_text()
        assert log.count("unreachable") == 1 and "reachable again" in log
        assert "guest:guest" not in log
    finally:
        server.stop()


def test_a_tus_upload_publishes_upload_completed(served: StorServer, rabbitmq: Any, exchange: str) -> None:
    consumer = Consumer(rabbitmq.url, exchange, "upload.*")
    try:
        data, sha = _blob(2000)
        created = httpx.post(f"{served.url}/files/", auth=AUTH, headers={
            "Tus-Resumable": "1.0.0", "Upload-Length": str(len(data))})
        assert created.status_code == 201
        patched = httpx.patch(f"{served.url}{created.headers['location']}", auth=AUTH, content=data, headers={
            "Tus-Resumable": "1.0.0", "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
        assert patched.status_code == 204
        (message,) = consumer.messages(1, timeout=20)
    finally:
        consumer.close()
    event = json.loads(message.body)
    assert message.routing_key == "upload.completed" and event["sha256"] == sha and event["size"] == 2000
    assert created.headers["location"].endswith(event["upload"])


# ---- stor's own AMQP link (stor/events/amqp_link.py) against the real broker ----------------------


def test_a_user_on_a_vhost_with_a_quoted_password_and_the_uris_heartbeat(
    tmp_path: Path, rabbitmq: Any, exchange: str
) -> None:
    user = f"stor ev {secrets.token_hex(3)}"
    url = rabbitmq.add_user(user, "p@ss/w:rd %1", vhost="samples/in")  # every part percent-encoded in the URL
    server = _server(tmp_path, f"{url}?exchange={exchange}&heartbeat=7", workers=1)
    try:
        _assert_a_request_publishes(server, url, exchange, "HEAD")
        rows = rabbitmq.rabbitmqctl("list_connections", "--quiet", "--no-table-headers", "user", "vhost", "timeout")
        ours = [row.split("\t") for row in rows.splitlines() if row.startswith(user)]
        assert ours == [[user, "samples/in", "7"]]  # the URI's heartbeat, not the broker's 60
        assert "p@ss" not in server.log_text()
    finally:
        server.stop()


def test_a_refused_login_is_reported_and_requests_go_on(tmp_path: Path, rabbitmq: Any, exchange: str) -> None:
    wrong = rabbitmq.url.replace("guest:guest@", "guest:wrong-secret@")
    server = _server(tmp_path, f"{wrong}?exchange={exchange}", workers=1)
    try:
        wait_for(lambda: _status(server)["events"]["rabbitmq"]["state"] == "down", 30, "the refusal reported")
        state = _status(server)["events"]["rabbitmq"]
        assert "403" in state["error"] and "ACCESS_REFUSED" in state["error"], state
        assert httpx.get(f"{server.url}/{_blob()[1]}").status_code == 404
        log = server.log_text()
        assert log.count("unreachable") == 1 and "ACCESS_REFUSED" in log and "wrong-secret" not in log
    finally:
        server.stop()


def test_an_exchange_declared_otherwise_is_a_clear_error(tmp_path: Path, rabbitmq: Any, exchange: str) -> None:
    from rabbitmq import connect

    connection = connect(rabbitmq.url)
    connection.channel().exchange_declare(exchange=exchange, exchange_type="direct", durable=True)
    connection.close()
    server = _server(tmp_path, _uri(rabbitmq, exchange), workers=1)
    try:
        wait_for(lambda: _status(server)["events"]["rabbitmq"]["state"] == "down", 30, "the refusal reported")
        error = _status(server)["events"]["rabbitmq"]["error"]
        assert "406" in error and "PRECONDITION_FAILED" in error and "type" in error, error
    finally:
        server.stop()


def test_a_burst_is_published_in_full_and_in_order(tmp_path: Path, rabbitmq: Any, exchange: str) -> None:
    server = _server(tmp_path, _uri(rabbitmq, exchange), workers=1, rabbitmq_events=[])
    consumer = Consumer(rabbitmq.url, exchange, "sha")
    try:
        shas = [_blob(8)[1] for _ in range(3000)]
        with httpx.Client(base_url=server.url) as client:
            for sha in shas:
                assert client.get(f"/{sha}").status_code == 404
        assert consumer.bodies(len(shas), timeout=60) == [sha.encode() for sha in shas]
        state = _status(server)["events"]["rabbitmq"]
        assert state["published"] == 3000 and state["dropped"] == 0 and state["queued"] == 0
    finally:
        consumer.close()
        server.stop()


def test_a_frozen_broker_is_noticed_by_the_heartbeat(tmp_path: Path, rabbitmq: Any, exchange: str) -> None:
    """SIGSTOP: the broker's socket stays open but nothing comes from it (a hung node, a dead link)."""
    import signal

    server = _server(tmp_path, _uri(rabbitmq, exchange, heartbeat="2"), workers=1)
    try:
        wait_for(lambda: _status(server)["events"]["rabbitmq"]["state"] == "up", 30, "the connection")
        os.kill(rabbitmq.proc.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: _status(server)["events"]["rabbitmq"]["state"] == "down", 20, "the silence noticed")
            assert "heartbeat 2 s" in _status(server)["events"]["rabbitmq"]["error"]
        finally:
            os.kill(rabbitmq.proc.pid, signal.SIGCONT)
        wait_for(lambda: _status(server)["events"]["rabbitmq"]["state"] == "up", 60, "the reconnection")
        _assert_a_request_publishes(server, rabbitmq.url, exchange)
    finally:
        server.stop()


def test_amqps_verifies_the_broker_with_the_uris_cafile(tmp_path: Path, exchange: str) -> None:
    """A node of its own with a TLS listener (a self-signed certificate for 127.0.0.1)."""
    from certs import self_signed_certificate
    from rabbitmq import RabbitMQ

    certs = tmp_path / "certs"
    certs.mkdir()
    cert, key = self_signed_certificate(certs)
    for name in ("trusted", "untrusted"):
        (tmp_path / name).mkdir()
    with RabbitMQ(tmp_path / "tls-node", tls=(cert, key)) as node:
        amqps = f"amqps://guest:guest@127.0.0.1:{node.tls_port}/?exchange={exchange}"
        trusted = _server(tmp_path / "trusted", f"{amqps}&cafile={cert}", workers=1)
        untrusted = _server(tmp_path / "untrusted", amqps, workers=1)  # the system's CAs: not this certificate
        try:
            _assert_a_request_publishes(trusted, node.url, exchange)  # consumed over plain AMQP on the same node
            wait_for(lambda: _status(untrusted)["events"]["rabbitmq"]["state"] == "down", 30, "the refusal")
            assert "CERTIFICATE_VERIFY_FAILED" in _status(untrusted)["events"]["rabbitmq"]["error"]
        finally:
            trusted.stop()
            untrusted.stop()
