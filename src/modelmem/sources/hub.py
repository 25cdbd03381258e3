"""Hugging Face Hub ids: config.json and safetensors headers only, never the weights.

`huggingface_hub` (the `hub` extra) downloads config.json (and model.safetensors.index.json) into the HF cache,
which gives the commit a revision resolves to. Safetensors headers come from HTTP range requests, first
`bytes=0-100000` (enough for 97% of checkpoints, huggingface_hub PR #1855) and, when the header is longer, one more
request for the rest, capped at `safetensors.MAX_HEADER_BYTES`. They are parsed by the same pure parser as local
files (`safetensors.parse_header`), and cached per commit under `$HF_HOME/modelmem/`, so a second run and
`HF_HUB_OFFLINE=1` runs make no request for them. Repository code is never run (no trust_remote_code).

huggingface_hub's own `get_safetensors_metadata` is not used: it has its own parser and errors (and a 25 MB cap);
modelmem keeps one parser for local files, the Hub and tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from modelmem import limits
from modelmem.errors import MissingExtraError, SourceError
from modelmem.sources.local import (
    PICKLE_INDEX,
    SAFETENSORS_INDEX,
    SAFETENSORS_SINGLE,
    SourceNote,
    read_index,
    shard_names,
    stored_from_pickle_index,
    with_headers,
)
from modelmem.sources.safetensors import (
    LENGTH_PREFIX_BYTES,
    header_length,
    parse_header,
)
from modelmem.spec import ModelSpec

PROBE_TIMEOUT_S = 2.0  # the network probe's budget, DNS included: an offline Hub id fails within 3 s
FIRST_RANGE_BYTES = 100_001  # bytes=0-100000, as huggingface_hub's parse_safetensors_file_metadata
DEFAULT_TIMEOUT_S = 10.0  # huggingface_hub's HF_HUB_DOWNLOAD_TIMEOUT default
PARALLEL_REQUESTS = 8
CACHE_VERSION = 1
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_CONTENT_RANGE_TOTAL = re.compile(r"/(\d+)\s*$")


class HubError(SourceError):
    """The Hub could not give what a Hub id needs (network, server, malformed repository)."""

    def __init__(self, repo_id: str, message: str) -> None:
        self.repo_id = repo_id
        super().__init__(f"{repo_id}: {message}")


class HubAuthError(HubError):
    """Gated or private: a token with access is needed."""


class HubNotFoundError(HubError):
    """No such repository, revision or config.json."""


class HubOfflineError(HubError):
    """HF_HUB_OFFLINE=1 and the cache does not hold what is needed."""


def spec_from_hub(repo_id: str, revision: str | None = None, *, timeout: float = DEFAULT_TIMEOUT_S) -> ModelSpec:
    """The spec of a Hub model from its config.json and safetensors headers (no weights downloaded).

    `revision` is a branch, tag or commit. With HF_HUB_OFFLINE=1 only the HF cache and modelmem's header cache are
    read. A repository without safetensors is sized from its config alone, with a `SourceNote` warning.
    """
    hf = _import_hub()
    where = f"{repo_id}@{revision}" if revision else repo_id
    offline = _offline(hf)
    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or None
    unreachable = None if offline else _unreachable(endpoint or "https://huggingface.co", min(timeout, PROBE_TIMEOUT_S))
    # No network: one quick probe instead of huggingface_hub's five retries with backoff (~24 s of "Retrying in…");
    # what the cache holds is still used, as with HF_HUB_OFFLINE=1.
    ctx = _Context(hf, repo_id, where, endpoint, _hub_cache_dir(hf), offline or unreachable is not None, timeout,
                   unreachable)
    offline = ctx.offline

    config_path = ctx.download("config.json", revision)
    commit = Path(config_path).parent.name  # .../snapshots/<commit>/config.json
    spec = _spec_from_config_file(config_path, repo_id, f"hf:{repo_id}@{commit}")
    cache = _header_cache_file(hf, repo_id, commit)
    files = _load_cached_headers(cache)
    if files is None:
        if offline:
            why = "HF_HUB_OFFLINE=1" if unreachable is None else f"{endpoint or 'huggingface.co'} is unreachable"
            warnings.warn(SourceNote(
                f"{where}: {why} and its safetensors headers are not cached; sized from config.json alone"
            ), stacklevel=2)
            return spec
        files = ctx.fetch_headers(commit)
        _save_cached_headers(cache, files)
    if not files:
        try:  # a pickle checkpoint's index gives its bytes; the .bin files are never downloaded
            index_path = ctx.download(PICKLE_INDEX, commit)
        except (HubNotFoundError, HubOfflineError):
            warnings.warn(SourceNote(f"{where}: no safetensors weights on the Hub; sized from config.json alone"),
                          stacklevel=2)
            return spec
        return dataclasses.replace(spec, stored=stored_from_pickle_index(index_path, spec))
    headers = [
        parse_header(struct.pack("<Q", len(raw)) + raw, f"{repo_id}/{name}")
        for name, raw in sorted((n, text.encode("utf-8")) for n, text in files.items())
    ]
    return with_headers(spec, headers)


def _spec_from_config_file(path: str, repo_id: str, source: str) -> ModelSpec:
    # config.py's parser, with errors naming the Hub id rather than the snapshot path in the HF cache.
    from modelmem.sources.config import read_config_json, spec_from_config

    return spec_from_config(read_config_json(path, source, "config.json is "), name=repo_id, source=source)


# --- fetching ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Context:
    hf: Any
    repo_id: str
    where: str
    endpoint: str | None
    cache_dir: str
    offline: bool
    timeout: float
    unreachable: str | None = None  # why the endpoint did not answer the probe, if it did not

    def download(self, filename: str, revision: str | None) -> str:
        """A small file (config.json, the index) through the HF cache; Hub errors become one-line messages."""
        errors = self.hf.errors
        try:
            return self.hf.hf_hub_download(
                self.repo_id, filename, revision=revision, cache_dir=self.cache_dir, endpoint=self.endpoint,
                local_files_only=self.offline, etag_timeout=self.timeout, library_name="modelmem",
            )
        except errors.LocalEntryNotFoundError as e:
            if self.unreachable is not None:
                raise HubError(
                    self.where, f"cannot reach {self.endpoint or 'huggingface.co'} ({self.unreachable}) and {filename} "
                                "is not cached; check the network or proxy"
                ) from e
            if self.offline:
                raise HubOfflineError(
                    self.where, f"HF_HUB_OFFLINE=1 and {filename} is not in the cache; run once online or unset it"
                ) from e
            raise HubError(
                self.where, f"cannot reach {self.endpoint or 'huggingface.co'} for {filename} and it is not cached"
            ) from e
        except errors.HFValidationError as e:
            raise HubNotFoundError(self.where, f"not a valid Hub id or revision ({e})") from e
        except Exception as e:
            hub_error = self.translate(e, filename)
            if hub_error is None:
                raise
            raise hub_error from e

    def translate(self, e: Exception, filename: str) -> HubError | None:
        """The one-line HubError for a huggingface_hub or HTTP failure; None for anything else (re-raised)."""
        errors = self.hf.errors
        if isinstance(e, errors.GatedRepoError):
            return HubAuthError(self.where, "gated repository: accept its terms on the Hub, then set HF_TOKEN")
        if isinstance(e, errors.RepositoryNotFoundError):
            return HubAuthError(self.where, "not found, or private/gated: check the id, or set HF_TOKEN to a token "
                                            "with access")
        if isinstance(e, errors.RevisionNotFoundError):
            return HubNotFoundError(self.where, "no such revision (branch, tag or commit)")
        if isinstance(e, errors.RemoteEntryNotFoundError):
            hint = "; for a GGUF-only repo, download the .gguf file and pass its path" if filename == "config.json" else ""
            return HubNotFoundError(self.where, f"the repository has no {filename}{hint}")
        if isinstance(e, errors.HfHubHTTPError):
            status = getattr(getattr(e, "response", None), "status_code", "?")
            if status in (401, 403):
                return HubAuthError(self.where, f"HTTP {status} for {filename}: set HF_TOKEN to a token with access")
            return HubError(self.where, f"HTTP {status} for {filename}")
        if isinstance(e, _http_errors().TimeoutException):
            return HubError(self.where, f"timed out after {self.timeout:g}s fetching {filename}")
        if isinstance(e, _http_errors().HTTPError):
            return HubError(self.where, f"network error fetching {filename} ({type(e).__name__})")
        return None

    def fetch_headers(self, commit: str) -> dict[str, str]:
        """{shard file: header JSON text} for the commit; {} when the repo has no safetensors weights."""
        try:
            index_path = self.download(SAFETENSORS_INDEX, commit)
        except HubNotFoundError:
            names = [SAFETENSORS_SINGLE]
        else:
            names = shard_names(read_index(index_path))
            if not names:
                raise HubError(self.where, f"{SAFETENSORS_INDEX} has an empty weight_map")
        try:
            with ThreadPoolExecutor(max_workers=PARALLEL_REQUESTS) as pool:
                texts = list(pool.map(lambda n: self.fetch_header(n, commit), names))
        except HubNotFoundError:
            if names == [SAFETENSORS_SINGLE]:
                return {}
            raise
        return dict(zip(names, texts))

    def fetch_header(self, filename: str, commit: str) -> str:
        source = f"{self.repo_id}/{filename}"
        first, total = self._range(filename, commit, 0, FIRST_RANGE_BYTES)
        n = header_length(first, source)
        data = first
        if len(first) < LENGTH_PREFIX_BYTES + n:
            data = self._range(filename, commit, 0, LENGTH_PREFIX_BYTES + n)[0]
        header = parse_header(data, source, file_size=total)
        return data[LENGTH_PREFIX_BYTES:LENGTH_PREFIX_BYTES + header.header_length].decode("utf-8")

    def _range(self, filename: str, commit: str, start: int, length: int) -> tuple[bytes, int | None]:
        """Up to `length` bytes from `start` (never more, even if the server ignores Range) and the file size."""
        hf = self.hf
        url = hf.hf_hub_url(self.repo_id, filename, revision=commit, endpoint=self.endpoint)
        headers = hf.utils.build_hf_headers(library_name="modelmem")
        headers["Range"] = f"bytes={start}-{start + length - 1}"
        headers["Accept-Encoding"] = "identity"
        chunks: list[bytes] = []
        got = 0
        try:
            with hf.utils.get_session().stream("GET", url, headers=headers, timeout=self.timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    hf.utils.hf_raise_for_status(response)
                    raise HubError(self.where, f"HTTP {response.status_code} for {filename}")
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
                    got += len(chunk)
                    if got >= length:
                        break
                total = _file_size(response)
        except HubError:
            raise
        except Exception as e:
            hub_error = self.translate(e, filename)
            if hub_error is None:
                raise
            raise hub_error from e
        return b"".join(chunks)[:length], total


def _file_size(response: Any) -> int | None:
    if response.status_code == 206:
        match = _CONTENT_RANGE_TOTAL.search(response.headers.get("Content-Range", ""))
        return int(match.group(1)) if match else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _unreachable(endpoint: str, timeout: float) -> str | None:
    """None if a TCP connection to the endpoint (or the proxy the environment names for it) opens within `timeout`;
    else the reason. DNS runs in the same daemon thread, so a hung resolver also ends at the timeout."""
    import socket
    import threading
    import urllib.parse
    import urllib.request

    url = urllib.parse.urlsplit(endpoint)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = p.hostname or host, p.port or 8080
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(e.strerror or type(e).__name__)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout + 0.2)
    return outcome[0] if outcome else f"no answer within {timeout:g}s"


# --- cache ------------------------------------------------------------------------------------------------------


def _hf_home(hf: Any) -> str:
    # Read at call time: huggingface_hub.constants freezes HF_HOME when it is first imported.
    return os.path.expanduser(os.environ.get("HF_HOME") or hf.constants.HF_HOME)


def _hub_cache_dir(hf: Any) -> str:
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return os.path.expanduser(explicit)
    if os.environ.get("HF_HOME"):
        return os.path.join(_hf_home(hf), "hub")
    return hf.constants.HF_HUB_CACHE


def _header_cache_file(hf: Any, repo_id: str, commit: str) -> Path | None:
    if not _COMMIT.match(commit):
        return None
    folder = "models--" + repo_id.replace("/", "--")
    return Path(_hf_home(hf)) / "modelmem" / "safetensors-headers" / folder / f"{commit}.json"


def _load_cached_headers(path: Path | None) -> dict[str, str] | None:
    if path is None or not path.is_file():
        return None
    try:
        if limits.regular_file_size(path, SourceError) > limits.SHARDS.maximum * limits.SAFETENSORS_HEADER_BYTES.maximum:
            return None
        cached = limits.loads_json(path.read_bytes(), SourceError)
    except (OSError, SourceError):
        return None  # a damaged cache entry is refetched
    if not isinstance(cached, dict) or cached.get("version") != CACHE_VERSION:
        return None
    files = cached.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        return None
    return files


def _save_cached_headers(path: Path | None, files: dict[str, str]) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "files": files}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs a refetch next time


# --- optional dependency ----------------------------------------------------------------------------------------


def _import_hub() -> Any:
    try:
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.errors
        import huggingface_hub.utils
    except ImportError as e:
        raise MissingExtraError("Hugging Face Hub ids", "hub") from e
    return huggingface_hub


def _offline(hf: Any) -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if value is not None:
        return value.strip().upper() in ("1", "ON", "YES", "TRUE")
    return bool(hf.constants.HF_HUB_OFFLINE)


def _http_errors() -> Any:
    # huggingface_hub 1.x speaks httpx, 2.x its fork httpx2; both define TimeoutException and HTTPError.
    try:
        import httpx2 as http
    except ImportError:
        import httpx as http
    return http


__all__ = ["spec_from_hub", "HubError", "HubAuthError", "HubNotFoundError", "HubOfflineError"]

