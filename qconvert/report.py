"""Renders results that the pipeline measured. Computes nothing new."""

from __future__ import annotations

from typing import Any


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def quantized_label(report: dict[str, Any]) -> str:
    if report["bits"] == 16 and report.get("mode") in ("bf16", "static"):  # not fp16: bf16, or A16W8
        return "bf16" if report["mode"] == "bf16" else "a16w8"
    return {16: "fp16", 8: "int8", 4: "int4"}.get(report["bits"], f"{report['bits']}-bit")


def random_data_warning(report: dict[str, Any]) -> str | None:
    """The line to show in bold when `--calibration random` was used (report.json: data), else None."""
    data = report.get("data")  # `qconvert validate` reports put the --data path here instead
    if not isinstance(data, dict) or not data.get("calibration_random"):
        return None
    how = (
        "calibrated and validated on random inputs"
        if data.get("validation_random")
        else "calibrated on random inputs"
    )
    return f"Accuracy figures are not meaningful: this model was {how} (--calibration random), not real data."


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Rows of (what, fp32, quantized, change) for the closing table of `qconvert export`."""
    rows: list[tuple[str, str, str, str]] = []
    acc = report.get("accuracy")
    if acc:
        change_pt = -100 * acc["drop"] + 0.0  # + 0.0 turns -0.0 into 0.0
        rows.append(
            (
                f"accuracy ({acc['samples']} held-out, labels)",
                _pct(acc["reference"]),
                _pct(acc["model"]),
                f"{change_pt:+.2f} pt",
            )
        )
    for name, m in report["validation"]["outputs"].items():
        if "top1_agreement" in m:
            rows.append((f"top-1 agreement with fp32 ({name})", "", _pct(m["top1_agreement"]), ""))
        if "embedding_cosine" in m:  # text encoders: the mean-pooled sentence embedding
            pooled = f"{m['embedding_cosine']:.5f} / {m['embedding_cosine_min']:.4f}"
            rows.append((f"embedding cosine, mean / worst ({name})", "", pooled, ""))
        if "next_token_agreement" in m:  # text decoders: argmax at the last real token
            rows.append((f"next-token agreement ({name})", "", _pct(m["next_token_agreement"]), ""))
        rows.append((f"cosine, mean / worst ({name})", "", f"{m['cosine']:.5f} / {m['cosine_min']:.4f}", ""))
        rows.append((f"SQNR / max abs error ({name})", "", f"{m['sqnr_db']:.1f} dB / {m['max_abs']:.3g}", ""))
    size = report["size"]
    rows.append(
        ("size", human_bytes(size["fp32_bytes"]), human_bytes(size["model_bytes"]), f"{size['ratio']:.2f}x")
    )
    lat = report["latency"]
    rows.append(
        (
            f"latency p50 (batch {lat['batch']}, {lat['provider'].replace('ExecutionProvider', '')})",
            f"{lat['fp32']['p50_ms']:.3f} ms",
            f"{lat['model']['p50_ms']:.3f} ms",
            f"{lat['ratio_p50']:.2f}x",
        )
    )
    return rows


def failure_lines(report: dict[str, Any]) -> list[str]:
    """One line per failed check, with the tolerance that would have passed; then, where per-layer
    sensitivity ran, the worst layers and what --auto did or could do."""
    return [
        f"{c['output']}: {c['metric']} = {c['measured']:.6g}, needs {c['bound']}"
        + (f" (would pass with --tolerance '{c['needed']}')" if c.get("needed") else "")
        + (f": {c['hint']}" if c.get("hint") else "")
        for c in report["validation"]["checks"]
        if not c["passed"]
    ] + blame_lines(report)


def _db(x: float | str | None) -> str:
    if x is None:
        return "-"
    return f"{x} dB" if isinstance(x, str) else f"{x:.1f} dB"


def sensitivity_rows(report: dict[str, Any], limit: int = 8) -> list[tuple[str, ...]]:
    """The per-layer ranking, worst first: (rank, node, op, cumulative, isolated, isolated at the
    model's outputs). Empty when sensitivity did not run or is not available."""
    sens = report.get("sensitivity") or {}
    return [
        (
            str(i),
            layer["node"],
            layer["op_type"],
            _db(layer["cumulative_sqnr_db"]),
            _db(layer["isolated_sqnr_db"]),
            _db(layer["isolated_model_output_sqnr_db"]),
        )
        for i, layer in enumerate(sens.get("ranking", [])[:limit], start=1)
    ]


def blame_lines(report: dict[str, Any]) -> list[str]:
    """For a failed run: the worst layers, and what --auto did or could do."""
    if report.get("passed", True):
        return []
    sens = report.get("sensitivity")
    if not sens:
        return []
    if not sens.get("available"):
        return [] if report.get("fallback") else [sens["reason"]]  # with --auto, a note says it
    worst = sens["ranking"][:3]
    lines = []
    if worst:
        lines.append(
            "worst layers (only that node quantized, SQNR at the model's outputs): "
            + ", ".join(
                f"{w['node']} ({w['op_type']}, {_db(w['isolated_model_output_sqnr_db'])})" for w in worst
            )
            + "; full ranking in report.json: sensitivity"
        )
    fallback = report.get("fallback")
    if fallback is None:
        lines.append(
            "rerun with --auto to keep the most sensitive nodes in float until the tolerance holds "
            "(--auto-budget N caps how many)"
        )
    elif not fallback.get("passed", False) and fallback.get("available", True):
        kept = fallback.get("kept_float", [])
        lines.append(
            f"--auto failed: {fallback['reason']}"
            + (f" (tried keeping in float: {', '.join(kept)})" if kept else "")
        )
    return lines
