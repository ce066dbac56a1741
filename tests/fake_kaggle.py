"""A fake Kaggle API server on 127.0.0.1, for download-failure tests.

How kagglehub is pointed at it, with environment variables only (so a
`kerastune` subprocess is pointed the same way):

- kagglehub 1.0.2 has no endpoint setting of its own (its config.py has a
  `DEFAULT_KAGGLE_API_ENDPOINT` that nothing reads); its client is
  kagglesdk's, whose endpoint comes from `KAGGLE_API_ENVIRONMENT`
  (kagglesdk 0.1.28 `kaggle_env.py`): `LOCALHOST` -> `http://localhost`
  (port 80), `TEST` -> `http://localhost:7777` (a fixed port, and verbose
  mode, which prints and so consumes every response body). Neither takes a
  port.
- So: `KAGGLE_API_ENVIRONMENT=LOCALHOST`, and the server is also an HTTP
  proxy: `HTTP_PROXY=http://127.0.0.1:<free port>` (and `NO_PROXY=` empty).
  kagglesdk's requests session merges the environment's proxy settings
  (`merge_environment_settings`), and kagglehub's resume request is a plain
  `requests.get`, so every call arrives here as `POST http://localhost/api/...`
  (absolute form), on a port the OS picked. TFDS downloads `http://` URLs
  with requests too, so the same server answers them.

What it serves, as Kaggle does for `kagglehub.model_download(handle, path)`:

- `POST /api/v1/models.ModelApiService/DownloadModelInstanceVersion` with
  {ownerSlug, modelSlug, framework, instanceSlug, versionNumber, path}:
  a 302 to `/files/<handle>/<path>` (Kaggle redirects to a signed storage
  URL), or 404 (JSON `{"code": 404, "message": ...}`) when the version or
  file does not exist;
- `GET /files/<handle>/<path>`: the file, with Content-Length (and
  `Accept-Ranges: bytes` and 206 answers to Range requests when
  `accept_ranges` is set);
- `POST .../GetModelInstance`: the version number, for unversioned handles;
- `POST .../ListModelInstanceVersionFiles`: the file list.

`answer(...)` makes it fail instead: a status (401, 403, 404, 500: a Kaggle
style JSON error), or "cut": the file's headers say its full length, half the
body is sent, and the connection is closed. Any other host (TFDS's URLs)
gets the same failure, or 404 when it answers "ok".

It listens on a free port, in a daemon thread, and stops by itself after
`lifetime` seconds or `max_requests` requests, whichever comes first
(`stop()` or the context manager stop it sooner).
"""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

API = "/api/v1/models.ModelApiService/"
FILES = "/files/"

# Fake credentials: kagglehub sends them as HTTP basic auth.
USERNAME, KEY = "kerastune-test", "0123456789abcdef"


def _framework(value):
    """ "MODEL_FRAMEWORK_KERAS" (or "keras") -> "keras"."""
    return str(value).lower().removeprefix("model_framework_")


class FakeKaggle:
    """The server. `models` maps a versioned handle without scheme
    ("keras/gpt2/keras/gpt2_base_en/3") to the folder whose files it serves.

    Attributes:
        url: "http://127.0.0.1:PORT".
        requests: list of (method, path, detail) it received: the request
            JSON's `path` for the API, the Range header for files, the URL
            for other hosts.
    """

    def __init__(self, models=None, lifetime=300, max_requests=2000):
        self.models = dict(models or {})
        self.requests = []
        self.mode, self.only, self.accept_ranges = "ok", None, False
        self.max_requests, self._count = max_requests, 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True,
                                        name="fake-kaggle")
        self._timer = threading.Timer(lifetime, self.stop)
        self._timer.daemon = True
        self._stopped = False
        self._thread.start()
        self._timer.start()

    # -- what to answer --------------------------------------------------------------------

    def answer(self, mode="ok", only=None, accept_ranges=False):
        """Sets how the server answers from now on.

        Args:
            mode: "ok", an HTTP status (401, 403, 404, 500, ...), or "cut".
            only: None, or a set of file paths ("model.weights.h5"): only
                those fail, every other file is served.
            accept_ranges: bool. Advertise `Accept-Ranges: bytes` and answer
                Range requests (kagglehub then resumes a cut-off file).
        """
        self.mode, self.only, self.accept_ranges = mode, only, accept_ranges
        self.clear()
        return self

    def mode_for(self, path):
        if self.only is not None and path not in self.only:
            return "ok"
        return self.mode

    def clear(self):
        with self._lock:
            self.requests.clear()

    def record(self, *entry):
        with self._lock:
            self.requests.append(entry)

    def count(self):
        """Counts a request; returns how many there were so far."""
        with self._lock:
            self._count += 1
            return self._count

    def asked(self, method="DownloadModelInstanceVersion"):
        """The file paths of the API calls `method` received, in order."""
        return [detail for m, path, detail in list(self.requests)
                if m == "POST" and path == API + method]

    # -- environment -----------------------------------------------------------------------

    def env(self, cache):
        """Environment variables that point kagglehub (and any requests-based
        http download) at this server, with fake credentials and `cache` as
        KAGGLEHUB_CACHE."""
        return proxy_env(self.url, cache)

    # -- life ------------------------------------------------------------------------------

    def stop(self):
        if self._stopped:
            return
        self._stopped = True
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def proxy_env(proxy_url, cache):
    """The environment for kagglehub through `proxy_url` (see the module's
    docstring), fake credentials and an own cache. Also sets KAGGLE_CONFIG_DIR
    to `cache`, so that no ~/.kaggle/kaggle.json is read."""
    env = {
        "KAGGLE_API_ENVIRONMENT": "LOCALHOST",
        "KAGGLE_API_TOKEN": "",  # empty: not used (it would come before the key)
        "KAGGLE_USERNAME": USERNAME,
        "KAGGLE_KEY": KEY,
        "KAGGLEHUB_CACHE": os.fspath(cache),
        "KAGGLE_CONFIG_DIR": os.fspath(cache),
        "KAGGLEHUB_VERBOSITY": "error",
        "NO_PROXY": "",
        "no_proxy": "",
    }
    for name in ("HTTP_PROXY", "http_proxy"):
        env[name] = proxy_url
    return env


def _handler(server):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10  # a stuck client cannot hold a thread for long

        def log_message(self, *args):
            pass

        # -- plumbing --------------------------------------------------------------------

        def _send(self, status, body=b"", content_type="application/octet-stream",
                  headers=()):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _kaggle_error(self, status, message):
            body = json.dumps({"code": status, "message": message}).encode()
            self._send(status, body, "application/json")

        def _fail(self, mode, what):
            """Answers with failure `mode`; False when mode is "ok"."""
            if mode == "cut":
                self._cut(b"x" * 4096)
                return True
            if mode != "ok":
                self._kaggle_error(int(mode), f"fake Kaggle: {what}: HTTP {mode}")
                return True
            return False

        def _cut(self, data):
            """Headers for all of `data`, half of it, then a closed connection."""
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            if server.accept_ranges:
                self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.close_connection = True

        # -- routes ----------------------------------------------------------------------

        def _route(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            host = parts.hostname or "localhost"
            path = parts.path
            if server.count() > server.max_requests:
                threading.Thread(target=server.stop, daemon=True).start()
                return self._send(503, b"fake Kaggle: request limit", "text/plain")
            if host not in ("localhost", "127.0.0.1"):  # a download elsewhere (TFDS)
                server.record(self.command, path, self.path)
                mode = server.mode_for(os.path.basename(path))
                if not self._fail(mode, self.path):
                    self._send(404, b"fake Kaggle: not served", "text/plain")
                return
            if path.startswith(API):
                try:
                    request = json.loads(body or b"{}")
                except ValueError:
                    request = {}
                server.record(self.command, path, request.get("path"))
                return self._api(path[len(API):], request)
            if path.startswith(FILES):
                server.record(self.command, path, self.headers.get("Range"))
                return self._file(unquote(path[len(FILES):]))
            server.record(self.command, path, None)
            self._send(404, b"fake Kaggle: no such route", "text/plain")

        def _api(self, method, request):
            handle = "/".join([request.get("ownerSlug", ""), request.get("modelSlug", ""),
                               _framework(request.get("framework", "")),
                               request.get("instanceSlug", "")])
            if method == "GetModelInstance":
                versions = sorted(int(h.rsplit("/", 1)[1]) for h in server.models
                                  if h.rsplit("/", 1)[0] == handle)
                if self._fail(server.mode_for(None), handle):
                    return
                if not versions:
                    return self._kaggle_error(404, f"fake Kaggle: no model {handle}")
                body = json.dumps({"versionNumber": versions[-1], "slug": request.get(
                    "instanceSlug")}).encode()
                return self._send(200, body, "application/json")
            handle = f"{handle}/{request.get('versionNumber')}"
            folder = server.models.get(handle)
            if method == "ListModelInstanceVersionFiles":
                if self._fail(server.mode_for(None), handle):
                    return
                if folder is None:
                    return self._kaggle_error(404, f"fake Kaggle: no model {handle}")
                files = [{"name": name} for name in _files(folder)]
                return self._send(200, json.dumps({"files": files, "nextPageToken": ""})
                                  .encode(), "application/json")
            if method != "DownloadModelInstanceVersion":
                return self._kaggle_error(404, f"fake Kaggle: no method {method}")
            file = request.get("path")
            mode = server.mode_for(file)
            if mode not in ("ok", "cut") and self._fail(mode, f"{handle} {file}"):
                return
            if folder is None or not file or file not in _files(folder):
                return self._kaggle_error(404, f"fake Kaggle: {handle} has no {file}")
            location = f"http://localhost{FILES}{quote(handle)}/{quote(file)}"
            self._send(302, b"", "text/plain", [("Location", location)])

        def _file(self, rest):
            owner, model, framework, variation, version, file = rest.split("/", 5)
            folder = server.models.get("/".join([owner, model, framework, variation, version]))
            if folder is None or file not in _files(folder):
                return self._send(404, b"fake Kaggle: no such file", "text/plain")
            with open(os.path.join(folder, file), "rb") as f:
                data = f.read()
            ranged = self.headers.get("Range")
            if server.mode_for(file) == "cut" and not ranged:
                return self._cut(data)
            headers = [("Accept-Ranges", "bytes")] if server.accept_ranges else []
            if ranged and server.accept_ranges:
                start = int(ranged.removeprefix("bytes=").split("-")[0])
                headers.append(("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}"))
                return self._send(206, data[start:], headers=headers)
            self._send(200, data, headers=headers)

        do_GET = do_POST = do_HEAD = _route

    return Handler


def _files(folder):
    """The files under `folder`, as "a/b.txt" paths."""
    return sorted(os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/")
                  for root, _, files in os.walk(folder) for f in files)
