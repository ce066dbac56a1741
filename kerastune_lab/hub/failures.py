"""Download failures -> one line: what failed (no connection, refused, not
found, server error, cut off) and what to do, for a preset or a dataset."""

import contextlib
import json
import os
import re

from kerastune_lab.errors import DownloadFailed, KerastuneError
from kerastune_lab.hub.handles import (
    CONFIG_FILE,
    HF_SCHEME,
    KAGGLE_SCHEME,
    kaggle_handle,
    kaggle_model_url,
    preset_source,
)

# Exception class names (any module) by what they mean. Matched by name so
# that neither requests, urllib3, httpx nor huggingface_hub need importing.
_CUT_OFF = {
    "ChunkedEncodingError",  # requests: body ended early / connection broken mid-body
    "ContentDecodingError",  # requests: gzip/deflate body cut off
    "DataCorruptionError",  # kagglehub: MD5 of the body did not match
    "IncompleteRead",  # http.client, urllib3
    "RemoteProtocolError",  # httpx: peer closed the connection mid-body
}
_NO_CONNECTION = {
    "ConnectionError",  # requests (also ProxyError, SSLError, ConnectTimeout) and builtin
    "Timeout", "ConnectTimeout", "ReadTimeout", "TimeoutException",  # requests, httpx
    "ConnectError", "NetworkError", "ProxyError",  # httpx
    "NewConnectionError", "NameResolutionError", "MaxRetryError",  # urllib3
    "ConnectTimeoutError", "ReadTimeoutError",
    "URLError", "gaierror",  # urllib, socket
}


def _is_http_failure(exc):
    """Whether `exc` came from an HTTP client library (not, say, a broken pipe
    between two local processes)."""
    module = type(exc).__module__ or ""
    return module.split(".")[0] in ("requests", "urllib3", "httpx", "httpx2", "httpcore",
                                    "huggingface_hub", "kagglehub", "kagglesdk", "urllib",
                                    "http", "socket", "tensorflow_datasets")


@contextlib.contextmanager
def download_errors(what, *, source=None, preset=None, cache=None):
    """Turns a download failure raised in the block into one `DownloadFailed` line.

    The exception's chain is walked (`__cause__`, `__context__`, and the
    errors requests and urllib3 carry), so a kagglehub error that KerasHub
    wrapped in a FileNotFoundError or ValueError, or a requests error inside
    a TFDS one, is found. Any other exception passes through unchanged.

    Args:
        what: str. What was being downloaded, e.g. "preset 'llama2_7b_en'",
            "TFDS dataset 'cats_vs_dogs'".
        source: "kaggle", "hf", "tfds" or None (guessed from `preset` and the
            exception): which cache and fix the message names.
        preset: str or None. The preset being loaded; with it the message
            names its Kaggle handle and license page.
        cache: str or None. The cache folder to name (default: the source's).
    """
    try:
        yield
    except (DownloadFailed, KerastuneError):
        raise
    except Exception as e:
        message = failure_message(e, what, source=source, preset=preset, cache=cache)
        if message is None:
            raise
        raise DownloadFailed(message) from e


_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                    "all_proxy")


def check_hosts_resolve(urls, what, *, source=None, cache=None):
    """Raises the one-line `DownloadFailed` of "no connection" at once when a
    host of `urls` has no address, before a download starts.

    TFDS retries an unreachable host with back-off for about three and a half
    minutes before it gives up; a name that does not resolve is known in
    milliseconds. Skipped when a proxy is set (the proxy resolves names).

    Args:
        urls: iterable of str. The URLs the download will fetch.
        what, source, cache: as for `download_errors`.
    """
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return
    for host in sorted({urlparse(url).hostname for url in urls} - {None}):
        try:
            socket.getaddrinfo(host, None)
        except socket.gaierror as e:
            message = failure_message(e, what, source=source, cache=cache)
            raise DownloadFailed(message.replace(f"{what}: ", f"{what} from {host}: ", 1)) from e


def _chain(exc):
    """`exc` and the exceptions it holds, outermost first: causes, contexts,
    urllib3's `reason`s and exceptions passed as arguments (requests wraps a
    urllib3 MaxRetryError that way)."""
    seen, todo = [], [exc]
    while todo:
        e = todo.pop(0)
        if not isinstance(e, BaseException) or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [getattr(e, "reason", None), *getattr(e, "args", ()), e.__cause__,
                 e.__context__]
    return seen


def _names(exc):
    return {cls.__name__ for cls in type(exc).__mro__}


def _status(exc):
    """The HTTP status code an exception reports, or None."""
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    if isinstance(code, int) and code >= 400:
        return code
    code = getattr(exc, "code", None)  # urllib.error.HTTPError
    if isinstance(code, int) and code >= 400 and "HTTPError" in _names(exc):
        return code
    text = str(exc)
    found = re.search(r"HTTP code: (\d{3})", text)  # TFDS DownloadError
    if found is None and "ResponseError" in _names(exc):
        found = re.search(r"too many (\d{3}) error responses", text)  # urllib3 retries
    return int(found.group(1)) if found else None


def _url(chain):
    """The URL a failed request asked for, when the chain holds one."""
    for e in chain:
        try:  # httpx's `.request` raises RuntimeError when it was never set
            request = getattr(e, "request", None)
            response = getattr(e, "response", None)
        except RuntimeError:
            request = response = None
        url = getattr(request, "url", None)
        if isinstance(url, str):
            return url
        url = getattr(response, "url", None)
        if isinstance(url, str):
            return url
        found = re.search(r"(?:url|reach) (https?://\S+?)[.:]?(?:\s|$)", str(e))
        if found:
            return found.group(1)
    return None


def _shorten(text, limit=120):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _connection_reason(chain):
    """A few words on why a connection failed: "Connection refused", "timed out"..."""
    proxy = any("ProxyError" in _names(e) for e in chain)
    reason = None
    for e in chain:
        found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(e))
        if found:
            reason = found.group(1).strip()
            break
    if reason is None and any(_names(e) & {"Timeout", "TimeoutException", "TimeoutError",
                                           "timeout", "ConnectTimeoutError",
                                           "ReadTimeoutError"} for e in chain):
        reason = "timed out"
    if reason is None:
        reason = _shorten(str(chain[-1]) or type(chain[-1]).__name__, 80)
    return f"through the proxy: {reason}" if proxy else reason


def _cut_reason(chain):
    for e in chain:
        found = re.search(r"IncompleteRead\((\d+) bytes read, (\d+) more expected\)", str(e))
        if found:
            return f"{found.group(1)} bytes read, {found.group(2)} more expected"
    for e in chain:
        if "DataCorruptionError" in _names(e):
            return "the file did not match its MD5 checksum"
    for e in chain:
        if _names(e) & _CUT_OFF:
            return _shorten(str(e) or type(e).__name__, 100)
    return "connection broken"


def _guess_source(chain, what):
    for e in chain:
        module = (type(e).__module__ or "").split(".")[0]
        if module in ("kagglehub", "kagglesdk"):
            return "kaggle"
        if module in ("huggingface_hub", "httpx", "httpx2"):
            return "hf"
    url = _url(chain) or ""
    if "kaggle" in url or "ModelApiService" in url:
        return "kaggle"
    if "huggingface.co" in url:
        return "hf"
    if "TFDS" in what or any((type(e).__module__ or "").startswith("tensorflow_datasets")
                             for e in chain):
        return "tfds"
    return None


def _cache_folder(source, cache=None):
    """(folder, how to move it) of the cache a source downloads into."""
    if source == "kaggle":
        folder = cache or os.environ.get("KAGGLEHUB_CACHE") or "~/.cache/kagglehub"
        return folder, "KAGGLEHUB_CACHE"
    if source == "hf":
        if cache is None:
            try:
                from huggingface_hub import constants

                cache = constants.HF_HUB_CACHE
            except ImportError:
                cache = "~/.cache/huggingface/hub"
        return cache, "HF_HUB_CACHE or HF_HOME"
    if source == "tfds":
        folder = cache or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
        return folder, "TFDS_DATA_DIR"
    return cache, None


def display_path(path):
    """`path` with the home folder written as `~`."""
    home = os.path.expanduser("~")
    path = os.fspath(path)
    if home not in ("/", "") and (path == home or path.startswith(home + os.sep)):
        return "~" + path[len(home):]
    return path


def _classify(chain):
    """(kind, the exception that says so) for the first exception in `chain`
    that tells a download failure: kind is "http" (a status code),
    "hf_offline", "cut" or "connection"; (None, None) for anything else."""
    for e in chain:
        names = _names(e)
        if _status(e) is not None:
            return "http", e
        if "OfflineModeIsEnabled" in names:
            return "hf_offline", e
        if names & _CUT_OFF and _is_http_failure(e):
            return "cut", e
        if names & _NO_CONNECTION and _is_http_failure(e):
            return "connection", e
    for e in chain:  # kagglehub, for a file missing from a model version
        if isinstance(e, ValueError) and "is not present in the model files" in str(e):
            return "http", None
    return None, None


def is_offline(exc):
    """Whether `exc` (or what it holds) says there is no connection (or that
    huggingface_hub is in offline mode)."""
    return _classify(_chain(exc))[0] in ("connection", "hf_offline")


def failure_message(exc, what, *, source=None, preset=None, cache=None):
    """The one-line message for a download failure `exc`, or None when `exc`
    is not one. Arguments as for `download_errors`."""
    chain = _chain(exc)
    kind, found = _classify(chain)
    if kind is None:
        return None
    source = source or preset_source(preset) or _guess_source(chain, what)
    handle = kaggle_handle(preset) if preset and source == "kaggle" else None
    url = _url(chain)
    host = re.sub(r"^\w+://([^/:]+).*$", r"\1", url) if url else None
    where = {"kaggle": "Kaggle", "hf": "the Hugging Face Hub"}.get(source) or host
    head = f"cannot download {what}" + (f" from {where}" if where else "")
    if kind == "http":
        status = _status(found) if found is not None else 404
        text = _http_message(head, status, source, handle, preset, url, host, chain)
    elif kind == "hf_offline":
        folder, variable = _cache_folder("hf", cache)
        text = (f"{head}: Hugging Face offline mode is on (HF_HUB_OFFLINE=1) and the preset is "
                f"not in the Hugging Face cache {display_path(folder)} ({variable}): unset "
                "HF_HUB_OFFLINE and run the same command once online, or copy that cache from "
                "a machine that has it")
    elif kind == "cut":
        text = (f"{head}: the download was interrupted ({_cut_reason(chain)}); run the same "
                "command again: it downloads the file again (or resumes it) and never loads a "
                "half-written file")
    elif any("SSLError" in _names(e) for e in chain):
        text = (f"{head}: the secure connection failed ({_connection_reason(chain)}): check "
                "the system's CA certificates, or set REQUESTS_CA_BUNDLE to the bundle of a "
                "proxy that inspects TLS")
    else:
        text = (f"{head}: no connection ({_connection_reason(chain)}); "
                + _offline_fix(source, handle, cache))
    return _one_line(text)


def _offline_fix(source, handle, cache):
    folder, variable = _cache_folder(source, cache)
    kind = "a dataset" if source == "tfds" else "a preset"
    if folder is None:
        fix = "run the same command once online"
    else:
        fix = (f"{kind} downloads once and is then cached in {display_path(folder)} "
               f"({variable}): run the same command once online, or copy that folder from a "
               "machine that has it")
    if handle and len(handle[len(KAGGLE_SCHEME):].split("/")) == 4:
        fix += ("; a handle without a version asks Kaggle for its latest version each time: "
                "add /VERSION to use the cached one offline")
    return fix


def _kaggle_credentials_set():
    """Whether kagglehub finds credentials (env, kaggle.json, token); None if
    it cannot tell (a malformed kaggle.json, about which kagglehub speaks itself)."""
    try:
        from kagglehub.config import get_kaggle_credentials

        return get_kaggle_credentials() is not None
    except Exception:
        return None


def _kaggle_file(chain):
    """The file path a failed Kaggle API call asked for (its request JSON's
    `path`), or None."""
    for e in chain:
        body = getattr(getattr(getattr(e, "response", None), "request", None), "body", None)
        if isinstance(body, (bytes, str)):
            try:
                path = json.loads(body).get("path")
            except (ValueError, AttributeError):
                continue
            if isinstance(path, str) and path:
                return path
    return None


def _http_message(head, status, source, handle, preset, url, host, chain):
    if status in (401, 403) and source == "kaggle":
        page = kaggle_model_url(handle) if handle else "the model's Kaggle page"
        found = _kaggle_credentials_set()
        if status == 401:
            why = "no Kaggle credentials are set" if found is False else (
                "the Kaggle credentials were not accepted")
        else:
            why = ("no Kaggle credentials are set, and the model may need its license accepted"
                   if found is False else "the model's license is not accepted for this "
                   "Kaggle account")
        return (f"{head}: access refused (HTTP {status}: {why}): accept the model's license "
                f"on {page} with your Kaggle account and set KAGGLE_USERNAME and KAGGLE_KEY "
                "(or ~/.kaggle/kaggle.json) to that account's API key, or attach the model in "
                "a Kaggle notebook")
    if status == 404 and source == "kaggle":
        file = _kaggle_file(chain)
        if handle and file and file != CONFIG_FILE:
            return (f"{head}: {handle} has no {file} (HTTP 404), or a file it needs was "
                    f"refused: check the model, its variation and version on "
                    f"{kaggle_model_url(handle)}, and accept its license there")
        if handle:
            return (f"{head}: {handle} does not exist (HTTP 404): check the model, its "
                    f"variation and version on {kaggle_model_url(handle)}")
        return f"{head}: the model or file does not exist (HTTP 404): check the handle"
    if status in (401, 403) and source == "hf":
        repo = preset[len(HF_SCHEME):] if preset and preset.startswith(HF_SCHEME) else None
        page = f"https://huggingface.co/{repo}" if repo else "the model's page"
        return (f"{head}: access refused (HTTP {status}): if the repo is gated, accept its "
                f"conditions on {page}; log in with `hf auth login` or set HF_TOKEN")
    if status == 404 and source == "hf":
        target = preset or "the repo"
        return (f"{head}: {target} or one of its files does not exist (HTTP 404): check the "
                "repo id on https://huggingface.co")
    if status >= 500:
        server = {"kaggle": "the Kaggle server", "hf": "the Hugging Face Hub"}.get(
            source, f"the server {host}" if host else "the server")
        return f"{head}: {server} failed (HTTP {status}); try again later"
    target = f" for {url}" if url else ""
    if status == 429:
        return f"{head}: too many requests (HTTP 429){target}; try again later"
    package = {"tfds": "tensorflow-datasets", "kaggle": "keras-hub", "hf": "keras-hub"}.get(
        source, "the package that downloads it")
    return (f"{head}: the server answered HTTP {status}{target}; try again later, and if it "
            f"persists the source may have moved: upgrade {package}")


def _one_line(text):
    return " ".join(text.split())
