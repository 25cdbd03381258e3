"""Hub ids against a loopback Hub: the real huggingface_hub client, HF_ENDPOINT pointed at 127.0.0.1.

The server speaks the parts of the Hub protocol huggingface_hub uses: HEAD/GET /{repo}/resolve/{revision}/{file}
with X-Repo-Commit and ETag, Range requests answered 206 with Content-Range, and X-Error-Code headers
(GatedRepo, RepoNotFound, RevisionNotFound, EntryNotFound) on errors. It never serves more tensor data than a
range asks for, and the tests check no request asks for weights.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from modelmem.errors import MissingExtraError
from modelmem.sources.local import SourceNote
from modelmem.sources.safetensors import HeaderNotJSONError, HeaderTooLargeError

pytest.importorskip("huggingface_hub")

from modelmem.sources.hub import HubAuthError, HubError, HubNotFoundError, HubOfflineError, spec_from_hub  # noqa: E402

COMMIT_MAIN = "a" * 40
COMMIT_V1 = "b" * 40
LLAMA = {
    "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256, "torch_dtype": "bfloat16",
}


class Sparse:
    """A file of `prefix` followed by zeros up to `size` bytes, served without materialising the zeros."""

    def __init__(self, prefix: bytes, size: int) -> None:
        self.prefix, self.size = prefix, size

    def read(self, start: int, end: int) -> bytes:  # [start, end)
        end = min(end, self.size)
        head = self.prefix[start:end]
        return head + b"\0" * max(0, end - max(start, len(self.prefix)))


def safetensors(tensors: dict[str, tuple[str, list[int], int]], pad_to: int | None = None) -> Sparse:
    """(dtype, shape, nbytes) per tensor, laid end to end."""
    entries, pos = {}, 0
    for name, (dtype, shape, nbytes) in tensors.items():
        entries[name] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    body = json.dumps(entries).encode()
    if pad_to:
        body += b" " * (pad_to - len(body))
    prefix = struct.pack("<Q", len(body)) + body
    return Sparse(prefix, len(prefix) + pos)


def blob(data: bytes) -> Sparse:
    return Sparse(data, len(data))


EMBED = ("BF16", [256, 64], 256 * 64 * 2)  # 32768 B
# A 64x256 layer stored as 1,024 F32 = 4 KiB plus a 16 GiB tensor whose bytes the server never sends.
HUGE = ("F32", [2**20, 4096], 2**20 * 4096 * 4)

REPOS: dict[str, dict] = {
    "org/tiny": {
        "revisions": {"main": COMMIT_MAIN, "v1": COMMIT_V1},
        "files": {
            COMMIT_MAIN: {
                "config.json": blob(json.dumps(LLAMA).encode()),
                "model.safetensors": safetensors({"model.embed_tokens.weight": EMBED, "big": HUGE}),
            },
            COMMIT_V1: {
                "config.json": blob(json.dumps({**LLAMA, "hidden_size": 32}).encode()),
                "model.safetensors": safetensors({"model.embed_tokens.weight": ("BF16", [256, 32], 16384)}),
            },
        },
    },
    "org/sharded": {
        "files": {COMMIT_MAIN: {
            "config.json": blob(json.dumps(LLAMA).encode()),
            "model.safetensors.index.json": blob(json.dumps({"metadata": {"total_size": 32768 + 512}, "weight_map": {
                "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                "model.norm.weight": "model-00002-of-00002.safetensors",
            }}).encode()),
            "model-00001-of-00002.safetensors": safetensors({"model.embed_tokens.weight": EMBED}),
            # A header longer than the first 100,001-byte range: needs the second request.
            "model-00002-of-00002.safetensors": safetensors({"model.norm.weight": ("F32", [128], 512)}, 150_000),
            "consolidated.safetensors": safetensors({"x": ("F32", [4], 16)}),  # not in the index: ignored
        }},
    },
    "org/gated": {"gated": True, "files": {COMMIT_MAIN: {
        "config.json": blob(json.dumps(LLAMA).encode()),
        "model.safetensors": safetensors({"model.embed_tokens.weight": EMBED}),
    }}},
    "org/slow": {"slow": 3.0, "files": {COMMIT_MAIN: {
        "config.json": blob(json.dumps(LLAMA).encode()),
        "model.safetensors": safetensors({"model.embed_tokens.weight": EMBED}),
    }}},
    "org/malformed": {"files": {COMMIT_MAIN: {
        "config.json": blob(json.dumps(LLAMA).encode()),
        "model.safetensors": blob(struct.pack("<Q", 9) + b"not json!" + b"\0" * 64),
    }}},
    "org/hostile": {"files": {COMMIT_MAIN: {
        "config.json": blob(json.dumps(LLAMA).encode()),
        "model.safetensors": blob(struct.pack("<Q", 2**40) + b"{}"),
    }}},
    "org/sharded-pickles": {"files": {COMMIT_MAIN: {
        "config.json": blob(json.dumps(LLAMA).encode()),
        "pytorch_model.bin.index.json": blob(json.dumps({"metadata": {"total_size": 4000}, "weight_map": {
            "a": "pytorch_model-00001-of-00001.bin"}}).encode()),
        "pytorch_model-00001-of-00001.bin": blob(b"never fetched"),
    }}},
    "org/bad-config": {"files": {COMMIT_MAIN: {"config.json": blob(b"{not json")}}},
    "org/gguf-only": {"files": {COMMIT_MAIN: {"model-Q4_K_M.gguf": blob(b"GGUF")}}},
    "org/pickles": {"files": {COMMIT_MAIN: {
        "config.json": blob(json.dumps(LLAMA).encode()),
        "pytorch_model.bin": blob(b"never fetched"),
    }}},
}


class Hub(BaseHTTPRequestHandler):
    log: list[tuple[str, str, str | None]] = []
    auth: list[bool] = []
    sent_weight_bytes = 0

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_HEAD(self) -> None:
        self.serve(head=True)

    def do_GET(self) -> None:
        self.serve(head=False)

    def fail(self, status: int, code: str) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Type", "application/json")
        body = json.dumps({"error": code}).encode()
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def serve(self, head: bool) -> None:
        Hub.log.append((self.command, self.path, self.headers.get("Range")))
        Hub.auth.append(self.headers.get("Authorization") == "Bearer hf_test_token")
        parts = self.path.split("/", 5)  # '', org, name, 'resolve', revision, file
        if len(parts) < 6 or parts[3] != "resolve":
            return self.fail(404, "RepoNotFound")
        repo_id, revision, filename = f"{parts[1]}/{parts[2]}", parts[4], parts[5]
        repo = REPOS.get(repo_id)
        if repo is None:
            return self.fail(401, "RepoNotFound")  # the Hub answers 401 for missing and private repos alike
        if repo.get("gated") and not self.headers.get("Authorization"):
            return self.fail(401, "GatedRepo")
        revisions = repo.get("revisions", {"main": COMMIT_MAIN})
        commit = revisions.get(revision, revision)
        if commit not in repo["files"]:
            return self.fail(404, "RevisionNotFound")
        f = repo["files"][commit].get(filename)
        if f is None:
            return self.fail(404, "EntryNotFound")
        if filename.endswith(".safetensors") and not head and repo.get("slow"):
            time.sleep(repo["slow"])
        start, end, status = 0, f.size, 200
        rng = self.headers.get("Range")
        if rng and not head:
            a, b = rng.removeprefix("bytes=").split("-")
            start, end, status = int(a), min(int(b) + 1, f.size), 206
        body = f.read(start, end)
        if filename.endswith(".safetensors") and not head:
            Hub.sent_weight_bytes += len(body)
        self.send_response(status)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", '"' + hashlib.sha1(f.prefix).hexdigest() + '"')
        self.send_header("Content-Length", str(f.size if head else len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{f.size}")
        self.end_headers()
        if not head:
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass


@pytest.fixture(scope="module")
def hub_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def hub(hub_url, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub_url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    Hub.log.clear()
    Hub.auth.clear()
    Hub.sent_weight_bytes = 0
    return tmp_path / "hf"


def weight_requests() -> list[tuple[str, str, str | None]]:
    return [r for r in Hub.log if r[0] == "GET" and r[1].endswith(".safetensors")]


def test_single_file_repo_from_headers(hub):
    spec = spec_from_hub("org/tiny")
    assert spec.name == "org/tiny"
    assert spec.hidden_size == 64
    assert spec.stored.total_bytes == 32768 + 2**20 * 4096 * 4
    assert spec.stored.num_params == 256 * 64 + 2**20 * 4096
    assert spec.source == f"hf:org/tiny@{COMMIT_MAIN}"
    # Headers only: every weight-file GET is a range within the first 100,001 bytes.
    assert weight_requests() and all(r[2] == "bytes=0-100000" for r in weight_requests())
    assert Hub.sent_weight_bytes <= 100_001


def test_revision_pins_a_commit(hub):
    spec = spec_from_hub("org/tiny", revision="v1")
    assert spec.hidden_size == 32
    assert spec.stored.total_bytes == 16384
    assert spec.source == f"hf:org/tiny@{COMMIT_V1}"


def test_sharded_repo_reads_the_index_and_long_headers(hub):
    spec = spec_from_hub("org/sharded")
    assert spec.stored.total_bytes == 32768 + 512
    assert spec.stored.num_params == 256 * 64 + 128
    fetched = {r[1].rsplit("/", 1)[1] for r in weight_requests()}
    assert fetched == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    # The 150,000-byte header needed a second range: bytes 0 .. 8 + 150,000 - 1.
    assert ("bytes=0-150007") in {r[2] for r in weight_requests()}


def test_headers_are_cached_per_commit(hub):
    first = spec_from_hub("org/tiny")
    Hub.log.clear()
    assert spec_from_hub("org/tiny") == first
    assert weight_requests() == []
    assert (hub / "modelmem" / "safetensors-headers" / "models--org--tiny" / f"{COMMIT_MAIN}.json").is_file()
    assert sorted(p.name for p in hub.iterdir()) == ["hub", "modelmem"]  # nothing written outside HF_HOME


def test_offline_uses_the_cache(hub, monkeypatch):
    online = spec_from_hub("org/tiny")
    Hub.log.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert spec_from_hub("org/tiny") == online
    assert Hub.log == []


def test_offline_without_cache_is_one_line(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubOfflineError, match=r"^org/tiny: HF_HUB_OFFLINE=1 and config.json is not in the cache") as e:
        spec_from_hub("org/tiny")
    assert "\n" not in str(e.value)
    assert Hub.log == []


def test_gated_repo_says_to_set_hf_token(hub):
    with pytest.raises(HubAuthError, match="gated.*HF_TOKEN"):
        spec_from_hub("org/gated")


def test_gated_repo_with_hf_token(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    assert spec_from_hub("org/gated").stored.total_bytes == 32768
    assert all(auth for (method, path, _), auth in zip(Hub.log, Hub.auth) if "org/gated" in path)


def test_missing_or_private_repo(hub):
    with pytest.raises(HubAuthError, match="private.*HF_TOKEN"):
        spec_from_hub("org/nope")


def test_bad_config_names_the_hub_id(hub):
    from modelmem.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"^config hf:org/bad-config@{COMMIT_MAIN}: config.json is not valid JSON"):
        spec_from_hub("org/bad-config")


def test_repo_without_config(hub):
    with pytest.raises(HubNotFoundError, match=r"no config.json; for a GGUF-only repo, download the .gguf"):
        spec_from_hub("org/gguf-only")


def test_unknown_revision(hub):
    with pytest.raises(HubNotFoundError, match=r"org/tiny@v9: no such revision"):
        spec_from_hub("org/tiny", revision="v9")


def test_slow_server_times_out(hub):
    with pytest.raises(HubError, match=r"timed out after 0.5s fetching model\.safetensors"):
        spec_from_hub("org/slow", timeout=0.5)


def test_malformed_header_names_the_remote_file(hub):
    with pytest.raises(HeaderNotJSONError, match=r"org/malformed/model\.safetensors"):
        spec_from_hub("org/malformed")


def test_hostile_header_length_is_refused_before_fetching_it(hub):
    with pytest.raises(HeaderTooLargeError, match=r"org/hostile/model\.safetensors"):
        spec_from_hub("org/hostile")
    assert len(weight_requests()) == 1


def test_repo_without_safetensors_falls_back_to_config(hub):
    with pytest.warns(SourceNote, match="no safetensors.*config.json alone"):
        spec = spec_from_hub("org/pickles")
    assert spec.stored is None and spec.hidden_size == 64
    assert not any(r[1].endswith(".bin") for r in Hub.log)


def test_pickle_index_gives_bytes_without_downloading_pickles(hub):
    spec = spec_from_hub("org/sharded-pickles")
    assert spec.stored.total_bytes == 4000
    assert spec.stored.num_params == 2000  # bf16 config: 2 bytes each
    assert not any(r[1].endswith(".bin") for r in Hub.log)


def test_unreachable_endpoint(hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    # huggingface_hub retries a failed HEAD five times with 1-8 s backoff (utils/_http.py); skip the waiting.
    monkeypatch.setattr(sys.modules["huggingface_hub.utils._http"].time, "sleep", lambda s: None)
    with pytest.raises(HubError, match="cannot reach"):
        spec_from_hub("org/tiny", timeout=1)


def test_missing_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(MissingExtraError, match=r"Hugging Face Hub ids.*modelmem\[hub\]"):
        spec_from_hub("org/tiny")
