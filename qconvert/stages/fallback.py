"""FallbackCost: what --auto's float fallback cost against the all-int8 graph (report.json `fallback`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qconvert.artifacts import onnx_size
from qconvert.settings import RunConfig
from qconvert.stages.base import Stage
from qconvert.stages.context import ExportContext


def _fallback_json(
    config: RunConfig,
    blame: Any,  # stages.blame._Blame
    all_int8_path: Path | None,
    model_path: Path,
    lat: dict[str, Any],
    notes: list[str],
) -> dict[str, Any] | None:
    """report.json's `fallback` entry (None without --auto); adds the notes that say what happened."""
    if not blame.sensitivity.get("available"):
        if not config.auto:
            return None  # the failure lines say it
        notes.append(blame.sensitivity["reason"] + "; --auto cannot keep layers in float either")
        return {"available": False, "reason": blame.sensitivity["reason"]}
    result = blame.fallback
    if result is None:
        return {"needed": False} if config.auto else None
    out: dict[str, Any] = {"available": True, "needed": True, **result.as_json()}
    if not result.passed:
        notes.append(f"--auto could not bring the model within tolerance: {result.reason}")
        return out
    assert all_int8_path is not None
    int8_bytes, model_bytes = onnx_size(all_int8_path), onnx_size(model_path)
    int8_ms, model_ms = lat["all_int8"].p50_ms, lat["model"].p50_ms
    out["size"] = {
        "all_int8_bytes": int8_bytes,
        "model_bytes": model_bytes,
        "ratio": model_bytes / int8_bytes,
    }
    out["latency"] = {
        "all_int8": lat["all_int8"].to_json(),
        "model": lat["model"].to_json(),
        "ratio_p50": model_ms / int8_ms,
    }
    kept = result.kept_float
    notes.append(
        f"--auto: {len(kept)} node(s) kept in float to meet the tolerance ({', '.join(kept)}); model.onnx is "
        f"that Q/DQ graph. Cost against the all-int8 graph: size {model_bytes / int8_bytes:.2f}x "
        f"({model_bytes - int8_bytes:+,} bytes), latency p50 {model_ms / int8_ms:.2f}x "
        f"({model_ms:.3f} ms vs {int8_ms:.3f} ms, measured interleaved)"
    )
    return out


class FallbackCost(Stage[ExportContext]):
    name = "fallback-cost"
    needs = ("blame", "all_int8_path", "lat")
    gives = ("fallback_json",)

    def run(self, ctx: ExportContext) -> None:
        ctx.fallback_json = None
        if ctx.blame is not None:
            ctx.fallback_json = _fallback_json(
                ctx.config, ctx.blame, ctx.all_int8_path, ctx.model_path, ctx.lat, ctx.notes
            )
