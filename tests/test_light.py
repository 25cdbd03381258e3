"""The core stays light: importing and estimating loads none of the heavy libraries."""

import subprocess
import sys

HEAVY = ("torch", "transformers", "numpy", "huggingface_hub", "gguf", "rich", "safetensors", "peft", "requests")


def _loaded_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint('HEAVY:' + ' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return out.rsplit("HEAVY:", 1)[1].split()


def test_import_is_light():
    assert _loaded_after("import modelmem") == []


def test_estimate_and_cli_are_light():
    assert _loaded_after("import modelmem; modelmem.estimate('meta-llama/Llama-3.1-8B', mode='lora', gpu='rtx-4090')") == []
    assert _loaded_after("from modelmem.cli import main; main(['estimate', 'llama-3.1-8b', '--json'])") == []


def test_catalog_is_not_read_at_import():
    code = "import modelmem, modelmem.catalog.models as m; print(m._load.cache_info().currsize if hasattr(m, '_load') else 0)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "0"
