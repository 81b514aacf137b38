"""Start, wait for and stop a local ComfyUI server process.

Used by the headless runner (when no server answers at ``--server``) and by the
test rig (to get a throw-away headless server). Standard library only: this
module must not import torch or comfy, it only launches ``main.py`` in a child
process with the current interpreter.
"""
import logging
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger("partid.cli")

# The repo folder is the custom-node package; when installed it lives in
# <ComfyUI>/custom_nodes/<repo>, so the grandparent of the repo is ComfyUI itself.
_REPO_ROOT = Path(__file__).resolve().parent.parent


class ServerError(RuntimeError):
    """The ComfyUI process could not be started or did not become ready."""


def is_comfyui_dir(path) -> bool:
    p = Path(path)
    return (p / "main.py").is_file() and (p / "comfy").is_dir()


def find_comfyui() -> Optional[str]:
    """Locate a ComfyUI checkout: $COMFYUI_PATH, else the repo's grandparent, else ~/ComfyUI.

    An explicitly set but invalid $COMFYUI_PATH returns None (with a warning)
    instead of silently falling back: the user asked for that checkout.
    """
    env = os.environ.get("COMFYUI_PATH")
    if env:
        if is_comfyui_dir(env):
            return str(Path(env).resolve())
        log.warning("COMFYUI_PATH=%s is not a ComfyUI checkout (needs main.py and comfy/)", env)
        return None
    for candidate in (_REPO_ROOT.parent.parent, Path.home() / "ComfyUI"):
        if is_comfyui_dir(candidate):
            return str(candidate.resolve())
    return None


def server_answers(host: str, port: int, path: str = "/system_stats", timeout: float = 2.0) -> bool:
    """True if an HTTP server at host:port answers ``path`` with 200."""
    try:
        with urllib.request.urlopen(f"http://{url_host(host)}:{port}{path}", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def cuda_available(python: str = sys.executable, timeout: float = 180.0) -> bool:
    """Ask a child interpreter whether torch sees CUDA (keeps torch out of this process)."""
    code = "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"
    try:
        return subprocess.run([python, "-c", code], capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def default_launch_args(python: str = sys.executable) -> list:
    """Arguments the runner adds when it launches ComfyUI itself."""
    args = ["--disable-api-nodes"]
    if not cuda_available(python):
        args.insert(0, "--cpu")  # ComfyUI aborts on CUDA init without a GPU unless told
    return args


def url_host(host: str) -> str:
    # ComfyUI's "listen on all" address is not a connectable one; IPv6 needs brackets.
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class ComfyServer:
    """A ComfyUI ``main.py`` child process with its output captured to ``log_path``.

    >>> with ComfyServer(find_comfyui(), port=8190, extra_args=["--cpu"]) as srv:
    ...     print(srv.url)
    """

    def __init__(self, comfy_path, host: str = "127.0.0.1", port: int = 8188,
                 extra_args: Sequence[str] = (), log_path=None, python: str = sys.executable,
                 ready_timeout: float = 300.0):
        if not comfy_path or not is_comfyui_dir(comfy_path):
            raise ServerError(f"not a ComfyUI checkout: {comfy_path!r} (set COMFYUI_PATH)")
        self.comfy_path = str(comfy_path)
        self.host = host
        self.port = int(port)
        self.extra_args = list(extra_args)
        self.python = python
        self.ready_timeout = ready_timeout
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix=f"comfyui-{self.port}-", suffix=".log")
            os.close(fd)
        self.log_path = str(log_path)
        self.process: Optional[subprocess.Popen] = None
        self.started_at: Optional[float] = None
        self.ready_after: Optional[float] = None  # seconds from start() to ready, for diagnostics
        self._log_file = None

    @property
    def url(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}"

    @property
    def command(self) -> list:
        return [self.python, "main.py", "--listen", self.host, "--port", str(self.port), *self.extra_args]

    def start(self) -> "ComfyServer":
        if self.process is not None and self.process.poll() is None:
            return self
        self._log_file = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")  # so the log file is current when we show it
        log.info("starting ComfyUI: %s (cwd %s, log %s)", " ".join(self.command), self.comfy_path, self.log_path)
        self.process = subprocess.Popen(self.command, cwd=self.comfy_path, env=env,
                                        stdin=subprocess.DEVNULL, stdout=self._log_file,
                                        stderr=subprocess.STDOUT)
        self.started_at = time.monotonic()
        return self

    def wait_ready(self, timeout: Optional[float] = None) -> "ComfyServer":
        """Block until GET /object_info answers; raise ServerError on exit or timeout."""
        if self.process is None:
            raise ServerError("wait_ready() called before start()")
        timeout = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServerError(f"ComfyUI exited with code {code} during startup; "
                                  f"log {self.log_path}:\n{self.log_tail()}")
            # /object_info is the last thing that works: it needs all nodes loaded.
            if server_answers(self.host, self.port, "/object_info", timeout=10.0):
                self.ready_after = time.monotonic() - self.started_at
                log.info("ComfyUI ready at %s after %.1fs", self.url, self.ready_after)
                return self
            if time.monotonic() > deadline:
                raise ServerError(f"ComfyUI not ready after {timeout:.0f}s; "
                                  f"log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.25)

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("ComfyUI did not exit after SIGTERM; killing pid %s", proc.pid)
                proc.kill()
                proc.wait(timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, "r", encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> "ComfyServer":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
