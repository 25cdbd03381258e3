"""Fake CUDA tensors on torch's CPU wheel: the reference the fake-CPU trace is checked against.

FakeTensorMode can make tensors that claim to live on `cuda:0` without a GPU, and forward ops run on them, but
autograd aborts the process (uncatchable) on the CPU wheel: it asks for a CUDA device guard, and for the CUDA
hooks to say an accelerator exists, and neither is registered. A dozen lines of C++ register both (a guard with
one device and one default stream; hooks that report one CUDA device), compiled once with the system's C++
compiler against the installed torch headers and cached. Nothing runs on a device; no CUDA library is needed.

Used only by the trace check (`run_trace(..., device="cuda")`, tests/test_trace_fake_cuda.py), never by
`modelmem trace`, which stays on fake CPU tensors.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

from modelmem.errors import ModelmemError

SOURCE = r"""
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <ATen/detail/CUDAHooksInterface.h>
namespace {
using c10::Device; using c10::DeviceType; using c10::Stream;
struct FakeCUDAGuardImpl final : c10::impl::DeviceGuardImplInterface {
  DeviceType type() const override { return DeviceType::CUDA; }
  Device exchangeDevice(Device) const override { return Device(DeviceType::CUDA, 0); }
  Device getDevice() const override { return Device(DeviceType::CUDA, 0); }
  void setDevice(Device) const override {}
  void uncheckedSetDevice(Device) const noexcept override {}
  Stream getStream(Device) const override { return Stream(Stream::DEFAULT, Device(DeviceType::CUDA, 0)); }
  Stream getDefaultStream(Device) const override { return Stream(Stream::DEFAULT, Device(DeviceType::CUDA, 0)); }
  Stream exchangeStream(Stream s) const override { return s; }
  c10::DeviceIndex deviceCount() const noexcept override { return 1; }
};
C10_REGISTER_GUARD_IMPL(CUDA, FakeCUDAGuardImpl);

struct FakeCUDAHooks final : at::CUDAHooksInterface {
  explicit FakeCUDAHooks(at::CUDAHooksArgs) {}
  bool hasCUDA() const override { return true; }
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return true; }
  bool hasPrimaryContext(c10::DeviceIndex) const override { return true; }
  void init() const override {}
  c10::DeviceIndex deviceCount() const override { return 1; }
  c10::DeviceIndex getCurrentDevice() const override { return 0; }
  void setCurrentDevice(c10::DeviceIndex) const override {}
  c10::DeviceIndex exchangeDevice(c10::DeviceIndex) const override { return 0; }
  c10::DeviceIndex maybeExchangeDevice(c10::DeviceIndex) const override { return 0; }
  int getNumGPUs() const override { return 1; }
  c10::DeviceIndex current_device() const override { return 0; }
};
// getCUDAHooks() caches its object on first use (importing torch already created the CPU wheel's default one):
// give that object the fake hooks' behaviour by pointing it at their vtable (same layout, no data members added).
struct Install {
  Install() {
    static FakeCUDAHooks fake{at::CUDAHooksArgs{}};
    auto& cached = const_cast<at::CUDAHooksInterface&>(at::detail::getCUDAHooks());
    *reinterpret_cast<void**>(&cached) = *reinterpret_cast<void**>(&fake);
  }
} install;
}
"""

_loaded = False


class FakeCudaUnavailableError(ModelmemError):
    """The fake-CUDA shim could not be built here (no C++ compiler, or no torch headers)."""

    def __init__(self, why: str) -> None:
        super().__init__(f"fake CUDA: {why}; the check needs a C++ compiler (g++) and torch's headers")


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modelmem"


def shim_path() -> Path:
    """Build the shim for the installed torch (once; cached by torch version and source) and return its path."""
    import torch

    key = hashlib.sha256((torch.__version__ + SOURCE).encode()).hexdigest()[:16]
    out = _cache_dir() / f"fake_cuda_{key}.so"
    if out.exists():
        return out
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None:
        raise FakeCudaUnavailableError("no C++ compiler found")
    root = Path(torch.__file__).parent
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_suffix(".cpp")
    src.write_text(SOURCE)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    cmd = [cxx, "-O1", "-w", "-shared", "-fPIC", "-std=c++17", f"-I{root / 'include'}", str(src), f"-L{root / 'lib'}",
           "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{root / 'lib'}", "-o", str(tmp)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise FakeCudaUnavailableError("compiling the shim failed: " + (done.stderr.strip().splitlines() or ["?"])[-1])
    tmp.replace(out)
    return out


def enable() -> None:
    """Load the shim into this process (irreversible: the CPU wheel's CUDA hooks now report one fake device)."""
    global _loaded
    if not _loaded:
        ctypes.CDLL(str(shim_path()), mode=ctypes.RTLD_GLOBAL)
        _loaded = True


@contextlib.contextmanager
def python_side() -> Iterator[None]:
    """What torch's and transformers' Python code asks about the GPU, answered as an H100 would (sm90, bf16):
    without this, `torch.autocast("cuda")` disables itself and MoE code refuses grouped_mm."""
    import torch

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch("torch.cuda.amp.common.amp_definitely_not_available", lambda: False))
        stack.enter_context(mock.patch.object(torch.cuda, "is_bf16_supported", lambda *a, **k: True))
        stack.enter_context(mock.patch.object(torch.cuda, "get_device_capability", lambda *a, **k: (9, 0)))
        yield
