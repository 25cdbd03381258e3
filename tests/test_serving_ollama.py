"""Ollama's defaults (runtimes/ollama.py), each read from ollama/ollama's source."""

import pytest

from modelmem.errors import InvalidJobError
from modelmem.model import resolve_model
from modelmem.runtimes import ollama

GIB = 1 << 30


def test_ollama_defaults():
    assert ollama.default_num_ctx(84944093184) == 262144  # ≥ 47 GiB
    assert ollama.default_num_ctx(25394413568) == 32768  # RTX 4090: 23.65 GiB ≥ 23 GiB
    assert ollama.default_num_ctx(15837691904) == 4096  # T4
    spec = resolve_model("meta-llama/Meta-Llama-3-8B")  # trained context 8192
    s = ollama.llama_server_settings(spec, total_vram_bytes=84944093184, num_parallel=4)
    assert s.n_ctx == 8192 * 4 and s.n_parallel == 4  # capped at the model, then × num_parallel (-c)
    assert (s.type_k, s.type_v, s.flash_attn) == ("f16", "f16", True)
    with pytest.raises(InvalidJobError, match="kv_dtype"):
        ollama.llama_server_settings(spec, total_vram_bytes=GIB, kv_type="q5_1")
    assert all(d.source for d in ollama.DEFAULTS)
