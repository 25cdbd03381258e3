"""Reads what benchmarks/peers.py wrote: each peer's estimate for each validation record.

Standard library only, so the accuracy benchmark can import it from the project's venv without the peers
(torch, accelerate, llm-analysis, DeepSpeed, hf-mem) being installed there.

    from peer_results import load_peer_results
    results = load_peer_results()            # {record_id: {peer: PeerResult}}
    r = results["torchtune_l31_8b_lora_4090"]["accelerate"]
    r.estimate_bytes or r.cannot_express
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PeerResult", "load_peer_results", "DEFAULT_PATH"]

DEFAULT_PATH = Path(__file__).resolve().parent / "results" / "peers.jsonl"


@dataclass(frozen=True)
class PeerResult:
    """One peer's answer for one record: a number of bytes, or the reason it has none.

    Exactly one of `estimate_bytes`, `cannot_express` and `error` is set. `cannot_express` means the peer has
    no input for something the job needs (LoRA, a KV-cache metric, sharding over GPUs…); `error` means it could
    express the job but failed or did not install. `note` says what the peer's number means.
    """

    record_id: str
    peer: str
    peer_version: str | None
    metric: str
    estimate_bytes: int | None
    cannot_express: str | None = None
    error: str | None = None
    note: str = ""

    @property
    def expressed(self) -> bool:
        return self.estimate_bytes is not None


def load_peer_results(path: str | Path = DEFAULT_PATH) -> dict[str, dict[str, PeerResult]]:
    """Return {record_id: {peer: PeerResult}} from a peers.jsonl file."""
    out: dict[str, dict[str, PeerResult]] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                result = PeerResult(
                    record_id=row["record_id"],
                    peer=row["peer"],
                    peer_version=row.get("peer_version"),
                    metric=row.get("metric", ""),
                    estimate_bytes=row.get("estimate_bytes"),
                    cannot_express=row.get("cannot_express"),
                    error=row.get("error"),
                    note=row.get("note", ""),
                )
            except (ValueError, KeyError) as e:
                raise ValueError(f"{path}:{line_no}: not a peer result row ({e})") from e
            out.setdefault(result.record_id, {})[result.peer] = result
    return out
