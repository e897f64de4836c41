"""A Hugging Face sentence encoder through qconvert vs plain fp32 and optimum's own int8 presets.

    python benchmarks/bench_hf.py [--steps 150] [--work /tmp/qconvert-bench-hf] [--repeats 100] [--json F]

The model is built offline from a config shaped like all-MiniLM-L6 (BERT, 6 layers, hidden 384,
12 heads, intermediate 1536) with a WordPiece tokenizer trained here, on sentences generated from a
small grammar. Random weights give degenerate activations (every token's hidden state nearly the
same), so the encoder is first trained with masked-language modelling for `--steps` steps on that
text (cached in `--work`; `--steps 0` keeps random weights). It is no real sentence encoder: the
figures say how quantization treats a trained BERT of this shape, not how a MiniLM checkpoint fares.

Variants, all measured in one run:

- fp32: the plain optimum export (`optimum-cli export onnx --task feature-extraction`)
- optimum avx2 / avx512_vnni: optimum's ORTQuantizer with AutoQuantizationConfig.avx2 /
  .avx512_vnni (dynamic), on that export
- qconvert dynamic / static: `qconvert export FOLDER --bits 8 --target cpu [--mode dynamic]`,
  calibrated on generated sentences that are not in the held-out set

For each: min and mean cosine of the mean-pooled (attention-mask weighted) sentence embedding
against the fp32 PyTorch model over held-out sentences, and the SQNR of the per-token hidden states
(real tokens only; finer than the pooled cosine, which a shared component of every embedding
dominates); p50 latency at a batch of 8 sentences with
2 intra-op threads, all variants timed interleaved, as a ratio to the fp32 export; file size ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qconvert import RunConfig  # noqa: E402
from qconvert.benchmark import interleaved_latency  # noqa: E402
from qconvert.pipeline import export  # noqa: E402
from qconvert.validation.metrics import mean_pooled, row_cosine  # noqa: E402

HIDDEN, LAYERS, HEADS, INTERMEDIATE, MAX_POSITIONS = 384, 6, 12, 1536, 128
BATCH, THREADS = 8, 2
CALIBRATION_LINES, HELDOUT_LINES = 256, 256

# --- text: a small grammar, so that the tokenizer and the MLM have real structure to learn -------


def words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


NOUNS = words(
    "cat dog bird horse child teacher doctor farmer river mountain city village road bridge house "
    "garden tree flower book letter song story storm winter summer morning evening market train "
    "ship window door table kitchen school student friend neighbor king queen soldier painter "
    "engine machine computer network signal message price bank coin island forest valley lake"
)
ADJECTIVES = words(
    "old young small large quiet loud bright dark cold warm green red blue heavy light quick slow "
    "happy sad strange familiar empty crowded ancient modern gentle rough clever tired busy"
)
VERBS = words(
    "sees finds follows builds paints reads writes carries opens closes watches helps visits "
    "crosses leaves remembers forgets sells buys repairs breaks moves pulls pushes answers"
)
ADVERBS = words("slowly quickly quietly often rarely never always suddenly carefully gladly")
PREPOSITIONS = words("near behind under over beside across through before after around")
NAMES = words("anna ben clara david emma felix grace henry iris jonas kate leo maria nina oscar")
JOINS = ("and", "but", "because", "while", "so", "although")


def _phrase(rng: random.Random) -> str:
    noun = (
        f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
        if rng.random() < 0.6
        else f"the {rng.choice(NOUNS)}"
    )
    return rng.choice(NAMES) if rng.random() < 0.25 else noun


def _clause(rng: random.Random) -> str:
    words = [_phrase(rng), rng.choice(VERBS), _phrase(rng)]
    if rng.random() < 0.4:
        words.insert(1, rng.choice(ADVERBS))
    if rng.random() < 0.5:
        words += [rng.choice(PREPOSITIONS), _phrase(rng)]
    return " ".join(words)


def sentences(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        clauses = [_clause(rng) for _ in range(rng.choice((1, 1, 2, 2, 3)))]
        text = clauses[0]
        for clause in clauses[1:]:
            text += f" {rng.choice(JOINS)} {clause}"
        out.append(text + rng.choice((".", ".", "!", "?")))
    return out


# --- the model: trained briefly with masked-language modelling, cached ---------------------------


def build_model(folder: Path, steps: int, log: logging.Logger) -> Path:
    """A BERT encoder folder (config, weights, tokenizer); reused when it exists."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    if (folder / "config.json").is_file():
        log.info("reusing the model in %s", folder)
        return folder
    corpus = sentences(20000, seed=1)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=1000, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MAX_POSITIONS,
    )
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_POSITIONS,
    )
    torch.manual_seed(0)
    model = BertForMaskedLM(config)
    if steps:
        _train_mlm(model, tokenizer, corpus, steps, log)
    folder.mkdir(parents=True, exist_ok=True)
    _save_encoder(model.bert, config, folder)  # the encoder alone: what a sentence-embedding model ships
    tokenizer.save_pretrained(folder)
    return folder


def _save_encoder(trained: Any, config: Any, folder: Path) -> None:
    """Save the trained encoder as a complete BertModel: the masked-LM's encoder has no pooler, and
    loading it without one would leave random weights that transformers warns about. The pooler is
    seeded and unused (feature-extraction exports last_hidden_state only)."""
    import torch
    from transformers import BertModel

    torch.manual_seed(1)
    encoder = BertModel(config)
    encoder.load_state_dict(trained.state_dict(), strict=False)
    encoder.eval().save_pretrained(folder)


def _train_mlm(model: Any, tokenizer: Any, corpus: list[str], steps: int, log: logging.Logger) -> None:
    import torch

    torch.set_num_threads(THREADS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=5e-4, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(0)
    mask_id, pad_id = tokenizer.mask_token_id, tokenizer.pad_token_id
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        lines = [corpus[i] for i in rng.integers(0, len(corpus), 32)]
        batch = tokenizer(lines, padding=True, truncation=True, max_length=32, return_tensors="pt")
        ids = batch["input_ids"].clone()
        special = (ids == pad_id) | (ids == tokenizer.cls_token_id) | (ids == tokenizer.sep_token_id)
        chosen = (torch.rand(ids.shape) < 0.15) & ~special
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        ids[chosen] = mask_id
        loss = model(input_ids=ids, attention_mask=batch["attention_mask"], labels=labels).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 25 == 0 or step == steps - 1:
            log.info(
                "MLM step %d/%d: loss %.3f (%.0f s)",
                step + 1,
                steps,
                loss.item(),
                time.perf_counter() - start,
            )


# --- variants -----------------------------------------------------------------------------------


def plain_export(folder: Path, out: Path) -> Path:
    from optimum.exporters.onnx import main_export

    if not (out / "model.onnx").is_file():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            main_export(str(folder), out, task="feature-extraction", do_validation=False)
    return out / "model.onnx"


def optimum_dynamic(fp32_dir: Path, out: Path, preset: str) -> Path:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    config = getattr(AutoQuantizationConfig, preset)(is_static=False)  # the preset's own defaults
    quantizer = ORTQuantizer.from_pretrained(fp32_dir, file_name="model.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantizer.quantize(save_dir=out, quantization_config=config)
    return out / "model_quantized.onnx"


def qconvert_int8(folder: Path, out: Path, mode: str, calib: Path, held: Path) -> tuple[Path, dict[str, Any]]:
    result = export(
        RunConfig(
            source=str(folder),
            bits=8,
            target="cpu",
            mode=mode,
            calibration=str(calib),
            data=str(held),  # each text file padded to its longest line (no --max-length)
            out_dir=out,
            force=True,
        )
    )
    return out / "model.onnx", result.report


# --- measurement ------------------------------------------------------------------------------


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feeds(session: Any, encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {i.name: encoded[i.name] for i in session.get_inputs()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=150, help="MLM training steps (0: random weights)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/qconvert-bench-hf"))
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("bench_hf")
    for noisy in ("qconvert", "root", "onnxruntime", "optimum", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    logging.getLogger().handlers[0].addFilter(lambda r: r.name == "bench_hf")

    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(THREADS)
    work = args.work
    folder = build_model(work / f"encoder-{args.steps}steps", args.steps, log)
    calib, held = work / "calibration.txt", work / "heldout.txt"
    calib.write_text("\n".join(sentences(CALIBRATION_LINES, seed=2)) + "\n")
    held_lines = sentences(HELDOUT_LINES, seed=3)
    held.write_text("\n".join(held_lines) + "\n")

    fp32 = plain_export(folder, work / f"fp32-{args.steps}")
    paths: dict[str, Path] = {"fp32 (optimum export)": fp32}
    for preset in ("avx2", "avx512_vnni"):
        paths[f"optimum {preset} dynamic"] = optimum_dynamic(
            fp32.parent, work / f"optimum-{preset}-{args.steps}", preset
        )
    reports = {}
    for mode in ("dynamic", "static"):
        path, report = qconvert_int8(folder, work / f"qconvert-{mode}-{args.steps}", mode, calib, held)
        paths[f"qconvert cpu {mode}"] = path
        reports[mode] = {
            "passed": report["passed"],
            "fusions": report.get("fusions"),
            "notes": report["notes"],
        }

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    encoded = {
        k: v.astype(np.int64) for k, v in tokenizer(held_lines, padding=True, return_tensors="np").items()
    }
    with torch.no_grad():
        reference = model(**{k: torch.from_numpy(v) for k, v in encoded.items()}).last_hidden_state.numpy()
    pooled_ref = mean_pooled(reference, encoded["attention_mask"])
    sessions = {name: _session(p) for name, p in paths.items()}
    results: dict[str, dict[str, float]] = {}
    for name, session in sessions.items():
        (hidden,) = session.run(["last_hidden_state"], _feeds(session, encoded))
        cos = row_cosine(pooled_ref, mean_pooled(hidden, encoded["attention_mask"]))
        real = encoded["attention_mask"] != 0  # per-token hidden states of real tokens: a finer measure
        noise = float(((hidden[real] - reference[real]) ** 2).sum())
        sqnr = 10 * np.log10(float((reference[real] ** 2).sum()) / max(noise, 1e-30))
        results[name] = {
            "cosine_min": float(cos.min()),
            "cosine_mean": float(cos.mean()),
            "token_sqnr_db": sqnr,
        }
    batch = {
        k: v[:BATCH] for k, v in tokenizer(held_lines[:BATCH], padding=True, return_tensors="np").items()
    }
    runners = {
        name: (lambda s=s: s.run(None, _feeds(s, {k: v.astype(np.int64) for k, v in batch.items()})))
        for name, s in sessions.items()
    }
    timed = interleaved_latency(runners, repeats=args.repeats, warmup=10)
    base_ms, base_size = timed["fp32 (optimum export)"].p50_ms, fp32.stat().st_size
    for name, path in paths.items():
        results[name].update(
            p50_ms=timed[name].p50_ms,
            latency_ratio=timed[name].p50_ms / base_ms,
            size_mb=path.stat().st_size / 1e6,
            size_ratio=path.stat().st_size / base_size,
        )
    seq = batch["input_ids"].shape[1]
    print(
        f"\n{LAYERS}-layer BERT, hidden {HIDDEN}, {HEADS} heads; MLM steps: {args.steps}; batch {BATCH} x {seq} "
        f"tokens, {THREADS} threads; {len(held_lines)} held-out sentences\n"
    )
    print("| variant | min cosine | mean cosine | token SQNR | p50 latency | vs fp32 | size |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        sqnr = "exact" if r["token_sqnr_db"] > 200 else f"{r['token_sqnr_db']:.1f} dB"
        print(
            f"| {name} | {r['cosine_min']:.4f} | {r['cosine_mean']:.5f} | {sqnr} | {r['p50_ms']:.2f} ms | "
            f"{r['latency_ratio']:.2f}x | {r['size_mb']:.1f} MB ({r['size_ratio']:.2f}x) |"
        )
    for mode, info in reports.items():
        print(f"\nqconvert {mode}: passed={info['passed']} fusions={info['fusions']}")
    if args.json:
        args.json.write_text(
            json.dumps({"results": results, "qconvert": reports, "steps": args.steps}, indent=2)
        )


if __name__ == "__main__":
    main()
