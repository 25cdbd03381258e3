"""Resolving a model name: sizes, paths, catalog names and aliases, Hub-looking ids, unknown names."""

import json

import pytest

import modelmem
from modelmem.counts import count_params
from modelmem.errors import UnknownModelError
from modelmem.model import parse_size, resolve_model


@pytest.mark.parametrize("text, value", [("7B", 7 * 10**9), ("70b", 70 * 10**9), ("1.5e9", 1_500_000_000),
                                         ("350m", 350 * 10**6), ("1.5T", 1_500 * 10**9)])
def test_sizes(text, value):
    assert parse_size(text) == value
    assert count_params(resolve_model(text)).total == value  # the synthetic shape has exactly that many


@pytest.mark.parametrize("text", ["7", "B", "-7B", "0B", "seven"])
def test_not_sizes(text):
    assert parse_size(text) is None


def test_config_file_and_folder(tmp_path, llama3_config_path):
    assert resolve_model(str(llama3_config_path)).hidden_size == 4096
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(json.loads(llama3_config_path.read_text())))
    assert count_params(resolve_model(str(folder))).total == 8_030_261_248  # Llama-3.1-8B's official count


def test_alias_and_case():
    assert resolve_model("llama-3.1-8b").hidden_size == resolve_model("META-LLAMA/Llama-3.1-8B").hidden_size == 4096


def test_unknown_name_suggests_close_catalog_names():
    with pytest.raises(UnknownModelError, match=r"did you mean .*llama-3\.1-8b"):
        resolve_model("llama-3.1-8bb")


def test_a_size_estimate_says_it_assumed_a_shape():
    est = modelmem.estimate("13B", mode="train", num_gpus=1)
    assert est.model.params == 13 * 10**9
    assert "Llama-style shape was assumed" in est.explanation[0]
