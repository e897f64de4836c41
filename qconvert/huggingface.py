"""Hugging Face model folders (a folder with `config.json`): SOURCE -> LoadedModel, and its fp32 ONNX.

Needs the optional extra `hf` (optimum-onnx, transformers); without it, loading such a folder is a
SourceError that says what to install. Nothing is downloaded and no code from the folder is run
(no `trust_remote_code`).

- Task: `--task`, else detected from `architectures` in config.json (BertModel ->
  feature-extraction, GPT2LMHeadModel -> text-generation, ...). Decoders are exported without the
  key/value cache: one forward over the whole sequence, the graph qconvert can calibrate and validate.
- Reference: the transformers model itself, loaded once; the same object is handed to optimum's
  exporter, so reference and export cannot drift apart.
- Export: optimum's ONNX exporter (TorchScript under the hood), batch and sequence axes dynamic.
  Its node names carry the module path (`/encoder/layer.0/attention/self/query/MatMul`); it is
  written into each node's metadata under the key torch's dynamo exporter uses, so `--exclude
  module:...` selects by PyTorch module here as for any other source.
- Prepare: where onnxruntime's transformer optimizer knows the architecture, the model carries
  a `TransformerFusion` (model type, heads, hidden size) for the prepare stage.
- Artifacts: config and tokenizer files are listed in `companion_files`, so OUT_DIR loads with
  `AutoTokenizer.from_pretrained(OUT_DIR)` on its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from qconvert.errors import ConfigError, ExportError, SourceError, brief
from qconvert.prepare import TransformerFusion
from qconvert.sources import LoadedModel
from qconvert.types import InputSpec

log = logging.getLogger(__name__)

HF_INSTALL = 'pip install "qconvert[hf]"'
CONFIG_FILE = "config.json"
# Files that make OUT_DIR usable on its own (AutoConfig / AutoTokenizer .from_pretrained(OUT_DIR)),
# copied when the source folder has them; files matching COMPANION_PATTERNS are copied too.
COMPANION_FILES = (
    CONFIG_FILE,
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
)
COMPANION_PATTERNS = ("*.model", "*tokenizer*", "*vocab*")  # sentencepiece models and the like
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".onnx", ".gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")
# Decoder tasks whose export would carry the key/value cache: refused, see module docstring.
PAST_SUFFIX = "-with-past"
# HF model_type -> onnxruntime.transformers model type whose fusions apply to optimum's export
# of it. Others are exported and quantized without fusions (the report says so).
FUSION_MODEL_TYPES = {
    **dict.fromkeys(
        (
            "albert",
            "bert",
            "camembert",
            "distilbert",
            "electra",
            "mpnet",
            "roberta",
            "xlm-roberta",
        ),
        "bert",
    ),
    **dict.fromkeys(("gpt2", "gpt_neo", "gptj", "codegen"), "gpt2"),
    **dict.fromkeys(("vit", "dinov2"), "vit"),
}
# output name -> how its tokens are judged (validation.metrics.TokenOutputs kinds)
EMBEDDING_OUTPUTS = ("last_hidden_state",)
NEXT_TOKEN_TASKS = ("text-generation",)
SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # torch's node metadata key; quantize.selectors reads it


def is_hf_folder(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def _require_extra(source: Path) -> None:
    try:
        import optimum.exporters.onnx  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise SourceError(
            f"SOURCE {source}: is a Hugging Face model folder, and exporting one needs the optional extra "
            f"'hf' (optimum-onnx, transformers), which is not installed here ({e.name or e}). Install it "
            f"with: {HF_INSTALL}"
        ) from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers and optimum warn freely while loading and tracing; what matters is reported as
    notes or errors instead."""
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.logging.set_verbosity(level)


def load_hf_folder(path: Path, task: str | None, inputs: tuple[InputSpec, ...] = ()) -> LoadedModel:
    """Load a Hugging Face folder as the PyTorch reference, with what the export needs to know."""
    _require_extra(path)
    if inputs:
        raise ConfigError(
            f"--input does not apply to a Hugging Face folder ({path}): its inputs come from the model's "
            "ONNX config (input_ids, attention_mask, ...). Drop --input; --max-length shapes text data."
        )
    config = _read_config(path)
    chosen, notes = _resolve_task(path, config, task)
    model, missing = _load_model(path, config, chosen)
    onnx_config = _onnx_config(model, chosen, path)
    input_names = tuple(onnx_config.inputs)
    output_names = tuple(onnx_config.outputs)
    examples, dims = _examples(onnx_config, input_names)
    if missing:
        notes.append(
            f"{len(missing)} weight(s) were not in {path} and are randomly initialised for task {chosen}: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}. Check --task matches what the "
            "model was trained for."
        )
    loaded = LoadedModel(
        name=path.resolve().name,
        kind="huggingface",
        origin=str(path),
        files=_source_files(path),
        input_names=input_names,
        output_names=output_names,
        example_inputs=examples,
        input_dims=dims,
        module=_forward_by_name(model, input_names, output_names),
        notes=notes,
        task=chosen,
        tokenizer=str(path) if any((path / f).is_file() for f in TOKENIZER_FILES) else None,
        fusion=_fusion_for(config),
        token_outputs=_token_outputs(chosen, output_names),
        companion_files=companion_files(path),
    )
    try:  # run once, so a broken model is reported as such and not as an export failure
        outs = loaded.run_torch(dict(zip(input_names, examples, strict=True)))
    except Exception as e:
        raise SourceError(
            f"SOURCE {path}: the model's forward raised {type(e).__name__}: {brief(e)} on example inputs "
            f"for task {chosen}. Check --task."
        ) from e
    if len(outs) != len(output_names):
        raise SourceError(
            f"SOURCE {path}: the model returned {len(outs)} output(s) for task {chosen}, where the ONNX "
            f"export has {', '.join(output_names)}. Check --task."
        )
    return loaded


def _read_config(path: Path) -> Any:
    from transformers import AutoConfig

    try:
        json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(
            f"SOURCE {path}: {CONFIG_FILE} is not valid JSON ({e}). Re-save the model with "
            "model.save_pretrained(folder)."
        ) from None
    try:
        with _quiet():
            return AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as e:
        raise SourceError(
            f"SOURCE {path}: transformers cannot read {CONFIG_FILE} ({type(e).__name__}: {brief(e)}). "
            "qconvert runs no code from model folders (trust_remote_code), so custom architectures are "
            "not supported; a model_type that this transformers does not know needs a newer transformers."
        ) from e


def _supported_tasks(model_type: str) -> list[str]:
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the architectures)
    from optimum.exporters.tasks import TasksManager

    try:
        tasks = TasksManager.get_supported_tasks_for_model_type(
            model_type, exporter="onnx", library_name="transformers"
        )
    except KeyError:
        return []
    return [t for t in tasks if not t.endswith(PAST_SUFFIX)]


def _resolve_task(path: Path, config: Any, task: str | None) -> tuple[str, list[str]]:
    """(task, notes): `--task` checked against what optimum exports for this model type, or the task
    detected from the config's `architectures`."""
    import transformers
    from optimum.exporters.tasks import TasksManager

    model_type = config.model_type
    supported = _supported_tasks(model_type)
    if not supported:
        raise SourceError(
            f"SOURCE {path}: model type {model_type!r} is not supported by optimum's ONNX exporter (the "
            "'hf' extra). Export it to ONNX yourself and pass the .onnx file."
        )
    if getattr(config, "is_encoder_decoder", False):
        raise SourceError(
            f"SOURCE {path}: {model_type} is an encoder-decoder model, which exports to several graphs; "
            "qconvert quantizes one graph. Export the encoder or decoder to ONNX yourself and pass the .onnx."
        )
    notes: list[str] = []
    if task is not None:
        chosen = TasksManager.map_from_synonym(task)
        if chosen.endswith(PAST_SUFFIX):
            raise ConfigError(
                f"--task {task}: qconvert exports decoders without the key/value cache (one forward over the "
                f"whole sequence, which it can calibrate and validate). Use --task {chosen[: -len(PAST_SUFFIX)]}."
            )
        if chosen not in supported:
            raise ConfigError(
                f"--task {task}: not a task optimum can export a {model_type} model for. Valid tasks for "
                f"{model_type}: {', '.join(supported)}."
            )
        return chosen, notes
    architectures = getattr(config, "architectures", None) or []
    model_class = getattr(transformers, architectures[0], None) if architectures else None
    if model_class is None:
        notes.append(
            f"{CONFIG_FILE} names no architecture this transformers knows ({architectures or 'none'}): "
            "exported as feature-extraction (hidden states); pass --task to choose another"
        )
        chosen = "feature-extraction"
    else:
        try:
            chosen = TasksManager.infer_task_from_model(model_class).replace(PAST_SUFFIX, "")
        except (KeyError, ValueError) as e:
            raise ConfigError(
                f"SOURCE {path}: cannot tell the task of {architectures[0]} ({brief(e)}). Pass --task, one of: "
                f"{', '.join(supported)}."
            ) from None
    if chosen not in supported:
        raise ConfigError(
            f"SOURCE {path}: the detected task {chosen} ({', '.join(architectures) or 'no architecture'}) is not "
            f"one optimum exports for {model_type}. Pass --task, one of: {', '.join(supported)}."
        )
    log.info("task %s detected from %s", chosen, CONFIG_FILE)
    return chosen, notes


def _load_model(path: Path, config: Any, task: str) -> tuple[Any, list[str]]:
    """(the model in eval mode, names of weights it needed and the folder did not have)."""
    from optimum.exporters.tasks import TasksManager

    model_class = TasksManager.get_model_class_for_task(task, framework="pt", model_type=config.model_type)
    try:
        with _quiet():
            model, info = model_class.from_pretrained(
                str(path), local_files_only=True, trust_remote_code=False, output_loading_info=True
            )
    except Exception as e:
        raise SourceError(
            f"SOURCE {path}: loading the weights for task {task} failed ({type(e).__name__}: {brief(e)}). The "
            "folder needs config.json and the weights (model.safetensors or pytorch_model.bin)."
        ) from e
    model.eval()
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # no key/value cache outputs: one forward over the sequence
    return model, sorted(info.get("missing_keys", []))


def _onnx_config(model: Any, task: str, path: Path) -> Any:
    from optimum.exporters.tasks import TasksManager

    try:
        constructor = TasksManager.get_exporter_config_constructor(
            exporter="onnx", model=model, task=task, library_name="transformers"
        )
        return constructor(model.config, int_dtype="int64", float_dtype="fp32")
    except Exception as e:
        raise SourceError(
            f"SOURCE {path}: optimum has no ONNX export config for this model and task {task} "
            f"({type(e).__name__}: {brief(e)})."
        ) from e


def _examples(
    onnx_config: Any, names: tuple[str, ...]
) -> tuple[tuple[np.ndarray, ...], tuple[tuple[int | None, ...], ...]]:
    """Example inputs (optimum's dummy inputs) and per input its dims, None where the export's axis
    is dynamic (batch and sequence)."""
    with _quiet():
        dummy = onnx_config.generate_dummy_inputs(framework="pt")
    examples = tuple(np.ascontiguousarray(dummy[n].detach().cpu().numpy()) for n in names)
    dims = tuple(
        tuple(None if axis in onnx_config.inputs[n] else size for axis, size in enumerate(a.shape))
        for n, a in zip(names, examples, strict=True)
    )
    return examples, dims


def _forward_by_name(model: Any, input_names: tuple[str, ...], output_names: tuple[str, ...]) -> Any:
    """A torch module taking the ONNX inputs positionally and returning the ONNX outputs as a tuple,
    so the transformers model runs as any other torch source (`LoadedModel.run_torch`)."""
    import torch

    class ForwardByName(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.model(**dict(zip(input_names, args, strict=True)), return_dict=True)
            return tuple(out[name] for name in output_names)

    return ForwardByName().eval()


def _fusion_for(config: Any) -> TransformerFusion | None:
    model_type = FUSION_MODEL_TYPES.get(config.model_type)
    heads = getattr(config, "num_attention_heads", 0)
    hidden = getattr(config, "hidden_size", 0)
    if model_type is None or not isinstance(heads, int) or not isinstance(hidden, int) or heads < 1:
        return None
    return TransformerFusion(model_type=model_type, num_heads=heads, hidden_size=hidden)


def _token_outputs(task: str, output_names: tuple[str, ...]) -> dict[str, str]:
    kinds = {n: "embedding" for n in output_names if n in EMBEDDING_OUTPUTS}
    if task in NEXT_TOKEN_TASKS and "logits" in output_names:
        kinds["logits"] = "next_token"
    return kinds


def companion_files(path: Path) -> tuple[Path, ...]:
    """The folder's config and tokenizer files (never weights), to copy into OUT_DIR."""
    found = {path / name for name in COMPANION_FILES if (path / name).is_file()}
    for pattern in COMPANION_PATTERNS:
        found.update(p for p in path.glob(pattern) if p.is_file() and p.suffix not in WEIGHT_SUFFIXES)
    return tuple(sorted(found))


def _source_files(path: Path) -> tuple[Path, ...]:
    """What the manifest hashes: the weights and the companion files."""
    weights = [p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    index = list(path.glob("*.index.json"))
    return tuple(sorted({*weights, *index, *companion_files(path)}))


# --- export -------------------------------------------------------------------------------------


def onnx_from_hf(loaded: LoadedModel, opset: int, dest: Path) -> str:
    """Export `loaded` (from `load_hf_folder`) with optimum to `dest`; return which exporter ran."""
    import onnx
    from optimum.exporters.onnx import onnx_export_from_model

    from qconvert.artifacts import save_onnx

    model = loaded.module.model
    with tempfile.TemporaryDirectory(prefix="optimum-", dir=dest.parent) as tmp:
        try:
            with _quiet():
                onnx_export_from_model(
                    model,
                    tmp,
                    task=loaded.task,
                    opset=opset,
                    monolith=True,
                    do_validation=False,  # qconvert validates against the PyTorch model itself
                    no_post_process=True,
                    device="cpu",
                )
        except Exception as e:
            hint = " Raise --opset." if "opset" in str(e).lower() else ""
            raise ExportError(
                f"optimum's ONNX exporter failed on {loaded.origin} (task {loaded.task}, opset {opset}): "
                f"{type(e).__name__}: {brief(e)}.{hint}"
            ) from e
        graphs = sorted(Path(tmp).glob("*.onnx"))
        if len(graphs) != 1:
            raise ExportError(
                f"optimum exported {len(graphs)} graphs for {loaded.origin} (task {loaded.task}): "
                f"{', '.join(g.name for g in graphs)}; qconvert quantizes one graph."
            )
        proto = onnx.load(str(graphs[0]))
    _check_names(proto, loaded)
    annotate_module_scopes(proto)
    save_onnx(proto, dest)
    from importlib import metadata

    return f"optimum-onnx {metadata.version('optimum-onnx')} (torch.onnx TorchScript exporter)"


def _check_names(proto: Any, loaded: LoadedModel) -> None:
    init = {t.name for t in proto.graph.initializer}
    got_in = [i.name for i in proto.graph.input if i.name not in init]
    got_out = [o.name for o in proto.graph.output]
    if sorted(got_in) != sorted(loaded.input_names) or got_out != list(loaded.output_names):
        raise ExportError(
            f"optimum's export of {loaded.origin} has inputs {got_in} and outputs {got_out}, where its ONNX "
            f"config promised {list(loaded.input_names)} and {list(loaded.output_names)}."
        )


def module_of_name(node_name: str) -> str | None:
    """`/encoder/layer.0/attention/self/query/MatMul` -> `encoder.layer.0.attention.self.query`: the
    TorchScript exporter names a node by its module scope, then its op."""
    if not node_name.startswith("/"):
        return None
    scopes = [s for s in node_name.strip("/").split("/")[:-1] if s]
    return ".".join(scopes) or None


def annotate_module_scopes(proto: Any) -> int:
    """Write each node's module path (from its name) into its metadata, as torch's dynamo exporter
    does, unless it has one; return how many nodes got one."""
    count = 0
    for node in proto.graph.node:
        if any(p.key == SCOPES_KEY for p in node.metadata_props):
            continue
        module = module_of_name(node.name)
        if module is None:
            continue
        prop = node.metadata_props.add()
        prop.key, prop.value = SCOPES_KEY, repr([module, node.op_type])
        count += 1
    return count
