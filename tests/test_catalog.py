"""The model catalog: lookup by id, alias and sibling; suggestions; lazy loading; entries carry sources."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from modelmem.catalog.models import entries, lookup
from modelmem.errors import UnknownModelError


@pytest.mark.parametrize(("name", "hf_id"), [
    ("llama-3.1-8b", "meta-llama/Llama-3.1-8B"),
    ("LLAMA-2-7B", "meta-llama/Llama-2-7b-hf"),
    ("llama-3-8b", "meta-llama/Meta-Llama-3-8B"),
    ("meta-llama/llama-3.1-8b", "meta-llama/Llama-3.1-8B"),
    ("  mistral-7b-v0.1 ", "mistralai/Mistral-7B-v0.1"),
    ("GPT-OSS-20B", "openai/gpt-oss-20b"),
    ("gpt2", "gpt2"),  # the legacy Hub id of openai-community/gpt2 keeps its own name
])
def test_lookup_by_id_and_alias(name, hf_id):
    assert lookup(name).name == hf_id


@pytest.mark.parametrize(("sibling", "base"), [
    ("meta-llama/Meta-Llama-3-8B-Instruct", "meta-llama/Meta-Llama-3-8B"),
    ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B"),
    ("meta-llama/Llama-3.2-3B-Instruct", "meta-llama/Llama-3.2-3B"),
    ("meta-llama/Llama-3.1-70B-Instruct", "meta-llama/Llama-3.1-70B"),
    ("meta-llama/Llama-3.1-405B-Instruct", "meta-llama/Llama-3.1-405B"),
])
def test_siblings_share_the_base_architecture(sibling, base):
    spec = lookup(sibling)
    assert spec.name == sibling  # the spec keeps the name asked for
    assert spec == dataclasses.replace(lookup(base), name=sibling)
    entry = next(e for e in entries() if e.id == base)
    assert sibling in entry.aliases and dict(entry.siblings)[sibling]  # each sibling says why it is the same


def test_unknown_name_suggests_close_ones():
    with pytest.raises(UnknownModelError, match="did you mean llama-3.1-8b") as info:
        lookup("llama-3.1-8c")
    assert info.value.suggestions and isinstance(info.value, KeyError)
    with pytest.raises(UnknownModelError):
        lookup("google-bert/bert-large-uncased")  # encoder-only records are not in the decoder catalog


def test_entries_are_typed_and_sourced():
    all_entries = entries()
    assert len(all_entries) >= 80
    ids = [e.id for e in all_entries]
    assert len(ids) == len(set(ids))
    for e in all_entries:
        assert e.source and e.family and e.aliases
        assert e.param_count is None or e.param_count > 0
        assert (e.param_count is None) == e.param_count_kind.startswith("withheld")
    moe = next(e for e in all_entries if e.id == "openai/gpt-oss-20b")
    assert (moe.param_count, moe.active_param_count) == (20_914_757_184, 4_187_440_704)


def test_catalog_specs_carry_config_and_source():
    spec = lookup("qwen2.5-7b")
    assert spec.config["model_type"] == "qwen2" and spec.source.startswith("https://")
    assert spec.qkv_bias and not spec.o_bias and spec.layer_types == ()  # use_sliding_window false
    assert lookup("gpt-oss-20b").quantization == {"quant_method": "mxfp4"}


def test_import_does_not_read_the_catalog():
    code = (
        "import importlib.resources as r\n"
        "real = r.files\n"
        "def guard(package): raise AssertionError(f'{package} read at import')\n"
        "r.files = guard\n"
        "import modelmem.catalog.models as m\n"
        "r.files = real\n"
        "assert m._load.cache_info().currsize == 0\n"
        "assert m.lookup('llama-2-7b').num_layers == 32 and m._load.cache_info().currsize == 1\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_built_catalog_is_current():
    # models.json is generated; a stale file means someone edited it by hand or the records changed.
    from pathlib import Path

    root = Path(__file__).parents[1]
    validation = root.parent / "shared" / "validation"
    if not validation.is_dir():
        pytest.skip(f"validation records not found at {validation}")
    subprocess.run([sys.executable, str(root / "tools" / "build_catalog.py"), "--check"], check=True)
