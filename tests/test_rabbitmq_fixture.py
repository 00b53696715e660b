"""The real RabbitMQ the events' tests run against behaves as they assume (tests/rabbitmq.py)."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pika
import pika.exceptions
import pytest

from rabbitmq import Consumer, connect, publish


def exchange_name() -> str:
    return f"stor-test-{uuid.uuid4().hex[:8]}"


def test_publish_and_consume_through_a_topic_exchange(rabbitmq: Any) -> None:
    exchange = exchange_name()
    sha = os.urandom(32).hex()
    with Consumer(rabbitmq.url, exchange, "sha") as only_sha, Consumer(rabbitmq.url, exchange, "blob.*") as blobs:
        publish(rabbitmq.url, exchange, "sha", sha)
        publish(rabbitmq.url, exchange, "blob.created", b'{"event": "blob.created"}', content_type="application/json")
        publish(rabbitmq.url, exchange, "other", b"nobody's")

        [m] = only_sha.messages(1, timeout=10)
        assert (m.body, m.routing_key, m.exchange) == (sha.encode(), "sha", exchange)
        [b] = blobs.messages(1, timeout=10)
        assert (b.body, b.routing_key, b.properties.content_type) == (
            b'{"event": "blob.created"}', "blob.created", "application/json")
        # nothing else was routed to either queue (a short wait: what is there has arrived by now)
        assert only_sha.messages(1, timeout=0.5) == []
        assert blobs.messages(1, timeout=0.5) == []

    # the exchange is the original Stor's kind: a durable topic exchange (a passive declare finds it)
    conn = connect(rabbitmq.url)
    try:
        conn.channel().exchange_declare(exchange=exchange, exchange_type="topic", durable=True, passive=True)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:  # another kind: PRECONDITION_FAILED
            conn.channel().exchange_declare(exchange=exchange, exchange_type="direct", durable=True)
        assert e.value.reply_code == 406
    finally:
        conn.close()


def test_messages_keeps_order_and_what_is_beyond_count(rabbitmq: Any) -> None:
    exchange = exchange_name()
    with Consumer(rabbitmq.url, exchange, "#") as c:
        for i in range(5):
            publish(rabbitmq.url, exchange, f"k.{i}", str(i))
        assert [m.body for m in c.messages(3, timeout=10)] == [b"0", b"1", b"2"]
        assert [(m.body, m.routing_key) for m in c.messages(2, timeout=10)] == [(b"3", "k.3"), (b"4", "k.4")]
        assert c.messages(1, timeout=0.3) == []  # fewer than asked for once the timeout passes


def test_a_user_on_a_vhost_as_the_original_uri_names_it(rabbitmq: Any) -> None:
    url = rabbitmq.add_user(f"u{uuid.uuid4().hex[:6]}", "p@ss/word", vhost=f"v{uuid.uuid4().hex[:6]}")
    exchange = exchange_name()
    with Consumer(url, exchange, "sha") as c:
        publish(url, exchange, "sha", b"on the vhost")
        assert c.bodies(1, timeout=10) == [b"on the vhost"]
        # another vhost: the same exchange name is another exchange
        publish(rabbitmq.url, exchange, "sha", b"on /")
        assert c.bodies(1, timeout=0.5) == []


def test_stop_and_start_again_on_the_same_port_and_data(rabbitmq: Any) -> None:
    """The session's node stopped mid-test and started again: same URL, durable things kept, new publishes arrive."""
    exchange = exchange_name()
    queue = f"kept-{uuid.uuid4().hex[:8]}"
    url = rabbitmq.url
    conn = connect(url)
    conn.channel().queue_declare(queue=queue, durable=True)
    conn.close()
    publish(url, "", queue, b"persistent", persistent=True)  # the default exchange routes to the queue by name

    consumer = Consumer(url, exchange, "sha")
    try:
        publish(url, exchange, "sha", b"before")
        assert consumer.bodies(1) == [b"before"]

        rabbitmq.stop()
        assert not rabbitmq.running
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            connect(url, timeout=2)  # refused: nothing listens
        with pytest.raises(pika.exceptions.AMQPError):
            consumer.messages(1, timeout=5)  # the consumer's connection is gone

        rabbitmq.start()
        print(f"restart: stop {rabbitmq.stop_seconds:.1f} s, start {rabbitmq.start_seconds:.1f} s")
        assert rabbitmq.url == url
        consumer.reconnect()
        publish(url, exchange, "sha", b"after")
        assert consumer.bodies(1) == [b"after"]

        # the same data directory: the durable queue and its persistent message survived
        conn = connect(url)
        try:
            method, _, body = conn.channel().basic_get(queue=queue, auto_ack=True)
            assert method is not None and body == b"persistent"
        finally:
            conn.close()
    finally:
        consumer.close()
        rabbitmq.start()  # the session's node stays up for the tests after this one


def test_a_second_node_beside_the_session_one(rabbitmq: Any, tmp_path: Any) -> None:
    """Nodes do not collide (names, ports, data); a killed node comes back too."""
    from rabbitmq import RabbitMQ

    with RabbitMQ(tmp_path / "second") as other:
        assert other.port != rabbitmq.port and other.nodename != rabbitmq.nodename
        exchange = exchange_name()
        with Consumer(other.url, exchange, "sha") as c:
            publish(other.url, exchange, "sha", b"on the second node")
            assert c.bodies(1) == [b"on the second node"]
        other.kill()
        other.start()
        with Consumer(other.url, exchange, "sha") as c:
            publish(other.url, exchange, "sha", b"after a kill")
            assert c.bodies(1) == [b"after a kill"]
    assert not other.running
    assert rabbitmq.accepts_login()
    print(f"second node: start {other.start_seconds:.1f} s after a kill")


def test_pika_blocking_parameters_from_the_url(rabbitmq: Any) -> None:
    params = pika.URLParameters(rabbitmq.url)
    assert (params.host, params.port, params.virtual_host) == ("127.0.0.1", rabbitmq.port, "/")
