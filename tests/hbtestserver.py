"""Start the tests' CouchDB-protocol server and proxy (tests/server/) from Python tests.

Standard library only, for /usr/bin/python3. Each is a context manager:

    with TestServer() as server:                   # in memory
        with TestProxy(server.url) as proxy:
            proxy.config(opaque_seqs=True)
            ... HTTP to proxy.url ...

    with TestServer(leveldb="/some/dir") as server:  # persistent across restarts

The Node.js programs live in $G_TEST_SRCDIR/server (tests/meson.build sets G_TEST_SRCDIR;
without it, next to this file). Node is $HB_TEST_NODE, or `node` on PATH. Their npm
dependencies come from build-aux/setup-npm.sh. Each child exits when its stdin closes, so a
test that dies never leaves one behind.
"""

import json
import os
import select
import shutil
import subprocess
import time

START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


class HarnessError(Exception):
    """The server or proxy could not be started or did not answer."""


class ProxyError(Exception):
    """The proxy answered a command with {"error": ...}."""


def server_dir():
    srcdir = os.environ.get("G_TEST_SRCDIR") or os.path.dirname(os.path.abspath(__file__))
    return os.path.join(srcdir, "server")


def node_binary():
    node = os.environ.get("HB_TEST_NODE") or shutil.which("node")
    if not node:
        raise HarnessError("node not found: set HB_TEST_NODE or run build-aux/setup-npm.sh")
    return node


class _Child:
    """A node program that prints {"port": N} once listening and talks JSON lines."""

    def __init__(self, script, args):
        directory = server_dir()
        if not os.path.isdir(os.path.join(directory, "node_modules")):
            raise HarnessError(f"{directory}/node_modules is missing: run build-aux/setup-npm.sh")
        self.process = subprocess.Popen(
            [node_binary(), os.path.join(directory, script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=directory,
        )
        self._buffer = b""
        try:
            line = self.read_line(START_TIMEOUT)
            self.port = json.loads(line)["port"]
        except Exception:
            self.stop()
            raise
        self.url = f"http://127.0.0.1:{self.port}"

    def read_line(self, timeout):
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HarnessError(f"no answer from {self.process.args[1]} in {timeout} s")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise HarnessError(
                        f"{self.process.args[1]} exited (status {self.process.poll()})"
                    )
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8")

    def write_line(self, text):
        self.process.stdin.write(text.encode("utf-8") + b"\n")
        self.process.stdin.flush()

    def stop(self):
        """Close stdin and wait for the exit; kill after STOP_TIMEOUT. Returns the status."""
        if self.process.stdin and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except OSError:
                pass
        try:
            status = self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        return status

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


class TestServer(_Child):
    """node server/server.js: express-pouchdb on 127.0.0.1, in memory or in LevelDB.

    TestServer(leveldb=None, port=0, extra_args=()) -> .url, .port, .process, .stop()
    """

    __test__ = False  # not a test case, whatever a test runner guesses from the name

    def __init__(self, leveldb=None, port=0, extra_args=()):
        args = ["--port", str(port)]
        if leveldb:
            args += ["--leveldb", str(leveldb)]
        super().__init__("server.js", [*args, *extra_args])


class TestProxy(_Child):
    """node server/proxy.js in front of target_url; see the command reference in proxy.js.

    TestProxy(target_url, port=0) -> .url, .port, .process, .stop(),
    .command(dict or JSON text) -> dict, .config(replace=False, **rules) -> rules,
    .fault(**fault) -> id, .set_token(token, user=None), .expire_sessions(), .stats() -> dict,
    .clear_stats(), .reset()
    """

    __test__ = False

    def __init__(self, target_url, port=0):
        super().__init__("proxy.js", ["--target", target_url, "--port", str(port)])

    def command(self, cmd):
        """Sends one command; returns the reply, raising ProxyError for {"error": ...}."""
        line = cmd if isinstance(cmd, str) else json.dumps(cmd)
        if "\n" in line:
            raise ValueError("a proxy command is one line")
        self.write_line(line)
        reply = json.loads(self.read_line(COMMAND_TIMEOUT))
        if "error" in reply:
            raise ProxyError(reply["error"])
        return reply

    def config(self, replace=False, **rules):
        return self.command({"cmd": "config", "replace": replace, "rules": rules})["rules"]

    def fault(self, **fault):
        return self.command({"cmd": "fault", "fault": fault})["id"]

    def set_token(self, token, user=None):
        self.command({"cmd": "set-token", "token": token, "user": user})

    def expire_sessions(self):
        self.command({"cmd": "expire-sessions"})

    def stats(self):
        return self.command({"cmd": "stats"})["stats"]

    def clear_stats(self):
        self.command({"cmd": "clear-stats"})

    def reset(self):
        self.command({"cmd": "reset"})
