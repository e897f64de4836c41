"""`qconvert run OUT_DIR --data DATA`: run an exported model the way its manifest says."""

from __future__ import annotations

from pathlib import Path

import typer

from qconvert.cli._common import err, out


def run(
    out_dir: Path = typer.Argument(..., help="A folder written by `qconvert export`."),
    data: str = typer.Option(..., "--data", help="Inputs (.npz keyed by input name, .npy, or a folder)."),
    output: Path = typer.Option(
        Path("outputs.npz"), "-o", "--output", help="Where to write the outputs (.npz)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing output file."),
) -> int:
    """Run OUT_DIR/model.onnx on DATA with the manifest's providers; write the outputs as .npz."""
    from qconvert.artifacts import write_npz
    from qconvert.calibrate import ModelInput, load_dataset
    from qconvert.runtime import make_session, manifest_providers, read_manifest
    from qconvert.trust import verify_artifact

    manifest = read_manifest(out_dir)
    verify_artifact(out_dir, manifest)  # run only the files the manifest records
    inputs = [ModelInput(i.name, i.dims, i.dtype) for i in manifest.source.inputs]
    dataset = load_dataset(data, inputs, flag="--data")
    session = make_session(out_dir / "model.onnx", manifest_providers(out_dir, manifest))
    if session.fell_back:
        err.print(f"[yellow]note:[/] {session.wanted} is not installed here; running on {session.used}.")
    results = dict(zip(session.output_names, session.run(dataset), strict=True))
    target = write_npz(output, results, force=force, inputs=[Path(data), out_dir])
    out.print(
        f"{len(dataset)} samples -> {target} ({', '.join(f'{k}{list(v.shape)}' for k, v in results.items())})"
    )
    return 0
