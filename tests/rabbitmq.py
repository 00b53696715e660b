"""A real RabbitMQ node (Debian's `rabbitmq-server`) for the events' tests, and a consumer bound to an exchange.

No mocks: a private broker on free loopback ports with its own data directory, which can be stopped
mid-test and started again on the same port and data (a client's reconnection is then tested for real).
See ../shared/REAL_SERVERS.md for the facts measured on this machine.

    broker = RabbitMQ(workdir).start()            # blocks until AMQP accepts guest's login
    with Consumer(broker.url, "stor", "#") as c:  # durable topic exchange, exclusive queue bound to "#"
        publish(broker.url, "stor", "sha", b"ab12...")
        [m] = c.messages(1, timeout=10)           # m.body == b"ab12...", m.routing_key == "sha"
    broker.stop(); broker.start()                 # same port, same node, same data
    broker.stop()

The node runs from /usr/lib/rabbitmq/bin/rabbitmq-server as the current user, not through Debian's
/usr/sbin wrapper: that wrapper switches to the `rabbitmq` user with `su` (the node's files must then
be owned by it, HOME becomes /var/lib/rabbitmq with the system node's Erlang cookie, and the VM runs
behind su as another user, not as the process this harness started). Here the VM is this process's
child, its HOME (and so its Erlang cookie) is its own directory, and nothing is shared with a system node that Debian's
package may have started (rabbit@<host> on 5672/25672) but epmd on port 4369, which every node shares:
the first node to start (this one or the system's) starts it as a daemon, which outlives the node. It is
left as Erlang starts it (every interface): bound to loopback only, a system node named after the host
could not be reached where the host name resolves to another address (Debian's 127.0.1.1).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from childproc import die_with_parent, port_free

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")  # Debian's real scripts (/usr/sbin's are the `su` wrapper)
INSTALL_HINT = (
    "apt-get install --no-install-recommends rabbitmq-server (bash .ci/run does it): "
    "the events' tests need a real RabbitMQ"
)


def rabbitmq_server_binary() -> str | None:
    """The node's start script, or None when Debian's rabbitmq-server is not installed."""
    script = RABBITMQ_BIN / "rabbitmq-server"
    return str(script) if script.is_file() and os.access(script, os.X_OK) else None


RESERVED_PORTS = {4369, 5671, 5672, 15672, 25672}  # epmd and a system node's usual ports


def _free_port() -> int:
    """A free loopback port below the kernel's ephemeral range, where no connection's source port can land.

    The port must stay the node's across restarts; one picked in the ephemeral range (as bind(0) picks it)
    may meanwhile be the source port of any outgoing connection (a client's, the node's own to epmd), and
    the node then fails to listen there (eaddrinuse, seen here).
    """
    import random

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    if low > 12000:
        for _ in range(200):
            port = random.randrange(10000, low)
            if port not in RESERVED_PORTS and port_free(port):
                return port
    with socket.socket() as s:  # no room below the range: take the kernel's pick
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _quiet_pika() -> None:
    """pika logs every refused connection at ERROR: the readiness poll makes many on purpose."""
    import logging

    logging.getLogger("pika").setLevel(logging.CRITICAL)


class RabbitMQ:
    """One private RabbitMQ node on free loopback ports, everything under `workdir`.

    The node name, ports and data directory are chosen once (at the first start) and kept: stop() then
    start() brings the same broker back with its durable exchanges, queues and persistent messages.
    """

    _names = itertools.count()

    def __init__(self, workdir: Path | str, user: str = "guest", password: str = "guest",
                 tls: tuple[Path, Path] | None = None) -> None:
        self.workdir = Path(workdir)
        self.tls = tls  # (certificate, key): AMQP over TLS too, on tls_port
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nodename = f"stortest-{os.getpid()}-{next(self._names)}@localhost"
        self.user, self.password = user, password  # guest, allowed from loopback by `loopback_users = none`
        self.port = 0  # AMQP
        self.dist_port = 0  # Erlang distribution (rabbitmqctl talks to the node there)
        self.tls_port = 0  # AMQPS, with tls
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0  # how long the last start took until AMQP accepted a login
        self.stop_seconds = 0.0  # how long the last stop took until the node had exited

    # --- addresses ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{self.port}/"

    @property
    def mnesia_base(self) -> Path:
        return self.workdir / "mnesia"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "log"

    @property
    def log_path(self) -> Path:
        """The node's own log file."""
        return self.log_dir / f"{self.nodename}.log"

    @property
    def console_path(self) -> Path:
        """The start script's and the VM's stdout and stderr (boot errors land here, not in the log)."""
        return self.workdir / "console.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # --- files and environment ---------------------------------------------------------------

    def _write_files(self) -> None:
        for d in (self.mnesia_base, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)  # must exist before the node starts
        (self.workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n"
            # a test machine's disk may be nearly full: the default 50 MB free space limit would block publishers
            "disk_free_limit.absolute = 1MB\n"
            + (f"listeners.ssl.1 = 127.0.0.1:{self.tls_port}\n"
               f"ssl_options.certfile = {self.tls[0]}\n"
               f"ssl_options.keyfile = {self.tls[1]}\n"
               "ssl_options.verify = verify_none\n"
               "ssl_options.fail_if_no_peer_cert = false\n" if self.tls else "")
        )
        (self.workdir / "enabled_plugins").write_text("[].\n")
        (self.workdir / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's

    def env(self) -> dict[str, str]:
        """The node's environment, also that of rabbitmqctl against it (same HOME: same Erlang cookie)."""
        w = self.workdir
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(w),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.mnesia_base),
            RABBITMQ_LOG_BASE=str(self.log_dir),
            RABBITMQ_CONFIG_FILE=str(w / "rabbitmq"),  # without ".conf"
            RABBITMQ_ADVANCED_CONFIG_FILE=str(w / "advanced.config"),  # absent: none
            RABBITMQ_CONF_ENV_FILE=str(w / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(w / "enabled_plugins"),
            RABBITMQ_FEATURE_FLAGS_FILE=str(w / "feature_flags"),
            RABBITMQ_PID_FILE=str(w / "node.pid"),
            # The start script then execs into the VM (see command()) ...
            RABBITMQ_ALLOW_INPUT="true",
            # ... where +B i ignores SIGINT as the script's other path does; the distribution port on loopback
            # only (its default is every interface).
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+B i -kernel inet_dist_use_interface {127,0,0,1}",
            ERL_CRASH_DUMP=str(w / "erl_crash.dump"),  # else it lands in the working directory
        )
        return env

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for path in (self.console_path, self.log_path):
            try:
                text = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            except FileNotFoundError:
                text = "(none)"
            parts.append(f"--- {path}:\n{text}")
        return "\n".join(parts)

    def rabbitmqctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run `rabbitmqctl -n NODE ARGS...` against this node; its stdout (raises on failure)."""
        done = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.nodename, *args],
            env=self.env(), cwd=self.workdir, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} exited with {done.returncode}:\n"
                               f"{done.stdout}{done.stderr}")
        return done.stdout

    def add_user(self, user: str, password: str, vhost: str = "/") -> str:
        """A user with every permission on vhost (created if needed); the AMQP URL for them there."""
        from urllib.parse import quote

        if vhost != "/" and vhost not in self.rabbitmqctl("list_vhosts", "--quiet", "--no-table-headers").split():
            self.rabbitmqctl("add_vhost", vhost)
        self.rabbitmqctl("add_user", user, password)
        self.rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        return f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}/{quote(vhost, safe='')}"

    # --- process -----------------------------------------------------------------------------

    def command(self) -> list[str]:
        """The start script, made to exec into the Erlang VM: the VM is then the process this harness started
        (its pid is proc.pid), signalled directly. RABBITMQ_ALLOW_INPUT picks that path of the script (its
        other one keeps a shell in front of a VM in the background, which dies with the shell only if the
        SIGTERM comes late enough); -noinput, which the script leaves out on that path, keeps the VM off stdin.
        """
        script = rabbitmq_server_binary()
        if script is None:
            raise RuntimeError(f"rabbitmq-server not found in {RABBITMQ_BIN}: {INSTALL_HINT}")
        return [script, "-noinput"]

    def _spawn(self) -> None:
        command = self.command()
        self._write_files()
        with open(self.console_path, "ab") as console:
            console.write(f"\n--- start {self.nodename} on AMQP {self.port}, dist {self.dist_port}\n".encode())
            console.flush()
            self.proc = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=console,
                start_new_session=True,  # a group: the VM and its helpers (epmd daemonises, in a session of its own)
                # SIGKILL, not SIGTERM: early in its boot the VM loses a SIGTERM (it asks init to stop, which
                # is not listening yet) and would run on; the setting survives exec, and the start script
                # execs into the VM (see command()).
                preexec_fn=die_with_parent(signal.SIGKILL),
            )

    def accepts_login(self) -> bool:
        """An AMQP connection opens and guest's login is accepted, now."""
        import pika
        import pika.exceptions

        _quiet_pika()
        params = pika.URLParameters(self.url)
        params.connection_attempts = 1
        params.socket_timeout = 2
        params.blocked_connection_timeout = 2
        try:
            pika.BlockingConnection(params).close()
        except pika.exceptions.AMQPError:
            return False
        except OSError:
            return False
        return True

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        t0 = time.monotonic()
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited with {self.proc.returncode}; log tail:\n{self.log_tail()}")
            if self.accepts_login():
                self.start_seconds = time.monotonic() - t0
                return
            time.sleep(0.2)  # polling for readiness, not synchronising on an event
        self._terminate(signal.SIGKILL)
        raise RuntimeError(f"rabbitmq-server did not accept an AMQP login within {timeout}s; log tail:\n"
                           f"{self.log_tail()}")

    def start(self, timeout: float = 90.0, tries: int = 3) -> RabbitMQ:
        """Start the node and wait until AMQP accepts a login. A no-op when it runs already.

        The first start picks free ports (others again if the node cannot start, e.g. a port taken in
        between); every later start reuses them, with the same node name and data.
        """
        if self.running:
            return self
        if self.port:
            self._spawn()
            self._wait_ready(timeout)
            return self
        error: Exception | None = None
        for _ in range(tries):
            self.port, self.dist_port = _free_port(), _free_port()
            self.tls_port = _free_port() if self.tls else 0
            if len({self.port, self.dist_port, self.tls_port} - {0}) != 2 + bool(self.tls):
                continue
            self._spawn()
            try:
                self._wait_ready(timeout)
                return self
            except RuntimeError as e:
                error = e
                self._terminate(signal.SIGKILL)
        raise RuntimeError(f"rabbitmq-server did not start in {tries} tries") from error

    def _terminate(self, sig: int, wait: float = 30.0) -> None:
        if self.proc is None:
            return
        t0 = time.monotonic()
        if self.proc.poll() is None:
            # SIGTERM to the VM only, which then shuts down cleanly (to the whole group, it would also reach
            # the VM's helper processes before the VM is done with them); SIGKILL to all of them.
            with contextlib.suppress(ProcessLookupError):
                if sig == signal.SIGTERM:
                    self.proc.send_signal(sig)
                else:
                    os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=wait)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything of its group still there
        self.proc.wait()
        self.stop_seconds = time.monotonic() - t0

    def stop(self) -> None:
        """A clean shutdown (SIGTERM: as `rabbitmqctl stop`), waiting for the node to exit (SIGKILL after 30 s).

        The ports, node name and data are kept for the next start(); the port stops accepting connections.
        """
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: a crashed broker, connections cut without a close."""
        self._terminate(signal.SIGKILL, wait=10)

    def restart(self, timeout: float = 90.0) -> RabbitMQ:
        self.stop()
        return self.start(timeout)

    def remove(self) -> None:
        """Stop, and remove the node's files (its data)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RabbitMQ:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- clients ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    body: bytes
    routing_key: str
    exchange: str
    properties: Any  # pika.BasicProperties: content_type, delivery_mode, headers, ...


def connect(url: str, timeout: float = 10.0) -> Any:
    """A pika BlockingConnection to url (one attempt, timeouts bounded)."""
    import pika

    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = timeout
    params.blocked_connection_timeout = timeout
    return pika.BlockingConnection(params)


def declare_exchange(channel: Any, exchange: str) -> None:
    """As the original Stor declares it: a durable topic exchange."""
    channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)


class Consumer:
    """A queue bound to `exchange` (durable topic, declared if missing) with binding_key.

    Binds before returning: everything published to the exchange afterwards with a matching routing key is
    kept for messages(). By default the queue is exclusive and auto-delete: it goes with the connection
    (close(), or the broker stopped), and what is published before a new Consumer binds is not there.
    With `durable_queue=NAME` it is a named durable queue, which outlives the connection and a clean broker
    restart with its binding: a Consumer made on the same name afterwards gets what was routed meanwhile
    (delete_queue() removes it).
    """

    def __init__(self, url: str, exchange: str = "stor", binding_key: str = "#", timeout: float = 10.0,
                 durable_queue: str = "") -> None:
        self.url, self.exchange, self.binding_key, self.timeout = url, exchange, binding_key, timeout
        self.durable_queue = durable_queue
        self._received: deque[Message] = deque()
        self.connection: Any = None
        self.channel: Any = None
        self.queue = ""
        self._open()

    def _open(self) -> None:
        self.connection = connect(self.url, self.timeout)
        self.channel = self.connection.channel()
        declare_exchange(self.channel, self.exchange)
        if self.durable_queue:
            declared = self.channel.queue_declare(queue=self.durable_queue, durable=True)
        else:
            declared = self.channel.queue_declare(queue="", exclusive=True, auto_delete=True)
        self.queue = declared.method.queue
        self.channel.queue_bind(queue=self.queue, exchange=self.exchange, routing_key=self.binding_key)
        self.channel.basic_consume(queue=self.queue, on_message_callback=self._on_message, auto_ack=True)

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._received.append(Message(body, method.routing_key, method.exchange, properties))

    def messages(self, count: int, timeout: float = 10.0) -> list[Message]:
        """The next `count` messages, as soon as they are in; fewer (maybe none) if `timeout` s pass first.

        Messages beyond count stay for the next call. A broker that went away raises pika's
        AMQPConnectionError / StreamLostError.
        """
        deadline = time.monotonic() + timeout
        while len(self._received) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.connection.process_data_events(time_limit=min(left, 0.5))  # returns when data comes or at the limit
        return [self._received.popleft() for _ in range(min(count, len(self._received)))]

    def bodies(self, count: int, timeout: float = 10.0) -> list[bytes]:
        return [m.body for m in self.messages(count, timeout)]

    def reconnect(self) -> None:
        """A new connection and queue, bound as before (after a broker restart); unread messages are kept."""
        self.close()
        self._open()

    def delete_queue(self) -> None:
        """Remove the queue now (a durable one stays otherwise), and close."""
        self.channel.queue_delete(queue=self.queue)
        self.close()

    def close(self) -> None:
        if self.connection is not None and self.connection.is_open:
            with contextlib.suppress(Exception):  # a broker gone already: nothing left to close
                self.connection.close()
        self.connection = self.channel = None

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def publish(url: str, exchange: str, routing_key: str, body: bytes | str, persistent: bool = False,
            declare: bool = True, **properties: Any) -> None:
    """Publish one message with publisher confirms (returns once the broker has it); declares the exchange
    (durable topic) first unless declare=False. Unroutable messages are dropped by the broker, as usual."""
    import pika

    if isinstance(body, str):
        body = body.encode()
    if persistent:
        properties["delivery_mode"] = 2  # persistent
    connection = connect(url)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        if declare and exchange:
            declare_exchange(channel, exchange)
        channel.basic_publish(exchange=exchange, routing_key=routing_key, body=body,
                              properties=pika.BasicProperties(**properties))
    finally:
        connection.close()
