"""Start and stop a real `tokd serve` for the integration tests.

Env: TOKD_BIN (build/tokd), TOKD_MODEL (the SmolLM2 GGUF). Each Server picks a free port,
waits for GET /ready and keeps the daemon's log in a temp file (printed when a start fails).
"""
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import http.client

BIN = os.environ.get("TOKD_BIN", "build/tokd")
MODEL = os.environ.get("TOKD_MODEL", "models/SmolLM2-135M-Instruct.Q4_1.gguf")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *flags, api_key=None):
        self.port = free_port()
        self.api_key = api_key
        self.log = tempfile.NamedTemporaryFile(prefix="tokd-serve-", suffix=".log", delete=False)
        args = [BIN, "serve", "--model", MODEL, "--host", "127.0.0.1", "--port", str(self.port)]
        if api_key:
            args += ["--api-key", api_key]
        args += [str(f) for f in flags]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKD_")}
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.wait_ready()

    def wait_ready(self, timeout=60):
        t_end = time.time() + timeout
        while time.time() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError("tokd serve exited with %d:\n%s" % (self.proc.returncode, self.log_text()))
            try:
                if self.request("GET", "/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("tokd serve not ready after %ds:\n%s" % (timeout, self.log_text()))

    def log_text(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def conn(self, timeout=120):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def headers(self, extra=None):
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = "Bearer " + self.api_key
        h.update(extra or {})
        return h

    def request(self, method, path, body=None, headers=None, timeout=120):
        """Returns (status, parsed JSON or text, response headers)."""
        c = self.conn(timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            c.request(method, path, body=body, headers=self.headers(headers))
            r = c.getresponse()
            data = r.read()
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = data.decode("utf-8", "replace")
            return r.status, parsed, dict(r.getheaders())
        finally:
            c.close()

    def metrics(self):
        status, text, _ = self.request("GET", "/metrics")
        assert status == 200
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        if rc != 0:
            print(self.log_text())
        os.unlink(self.log.name)
        return rc


def stream_events(resp):
    """Yields (arrival time, decoded data) for each SSE `data:` line of an http.client response."""
    buf = b""
    while True:
        line = resp.readline()
        if not line:
            return
        line = line.rstrip(b"\r\n")
        if line.startswith(b"data: "):
            payload = line[6:]
            yield time.monotonic(), (payload.decode() if payload == b"[DONE]" else json.loads(payload))
