"""Issue 33 item 5 (the client's part), without a vLLM server: a server that stops answering
(accepts the connection, never replies) or is gone (connection refused) costs at most the
time-out per attempt and the backoff between the retries, then one ServerError line that names
the server; never a hang. ServerError is a ResumableError: the training loop checkpoints the
steps done before it propagates (tests/training/test_loop.py)."""

import socket
import threading
import time

import pytest

from divreg.serving._client import ServerClient, ServerError
from divreg.training import ResumableError


def _silent_server():
    """A socket that accepts connections and never answers; (url, count of connections, stop)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted, held, stop = [], [], threading.Event()

    def serve():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except socket.timeout:
                continue
            accepted.append(1)
            held.append(connection)  # kept open, never answered

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def close():
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        listener.close()

    return f"http://127.0.0.1:{listener.getsockname()[1]}", accepted, close


def test_a_server_that_stops_answering_times_out_retries_then_fails_in_one_line():
    url, accepted, close = _silent_server()
    try:
        client = ServerClient(url, timeout=0.5, retries=2, backoff=0.1)
        started = time.perf_counter()
        with pytest.raises(ServerError, match=rf"the server at {url} does not answer /v1/models") as error:
            client.get("/v1/models")
        elapsed = time.perf_counter() - started
    finally:
        close()
    assert isinstance(error.value, ResumableError) and "\n" not in str(error.value)
    assert len(accepted) == 3  # the first attempt and 2 retries
    assert 1.5 <= elapsed < 6, elapsed  # 3 time-outs of 0.5 s plus the backoff, not a hang


def test_a_server_that_is_gone_is_retried_with_backoff_then_fails_in_one_line():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: connection refused
    client = ServerClient(f"http://127.0.0.1:{port}", timeout=0.5, retries=3, backoff=0.2)
    started = time.perf_counter()
    with pytest.raises(ServerError, match="does not answer"):
        client.post("/v1/completions", {"prompt": [1]})
    elapsed = time.perf_counter() - started
    assert 0.2 * (1 + 2) <= elapsed < 5, elapsed  # backoff 0.2 x 2^i between the retries (urllib3's first is 0)
