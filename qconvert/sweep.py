"""`qconvert sweep`: where quantization stops paying.

A sweep runs the export pipeline once per setting, a *trial* = one (bits, mode), and lays the
results side by side: agreement with the original, size and latency against fp32, and the
collapse probe. Trials are independent exports, so they run in worker processes (local, spawned)
or as Ray tasks; each writes its own OUT_DIR under `trials/<bits>bit-<mode>/` inside the sweep's
one atomic output folder, so a failed sweep leaves nothing behind.

Latency is *not* taken from the trials: trials that share a machine disturb each other's timing.
Once every trial is done, this process times fp32 and every quantized model interleaved, one after
the other, on the same inputs (the way `qconvert export` times fp32 against one model). The
figure each trial measured for itself stays in its own report.json.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qconvert import errors
from qconvert.errors import ConfigError, QConvertError
from qconvert.results import (  # the sweep's result types (and its row statuses) live with the others
    BASELINE_STATUS,
    ERROR,
    INCONCLUSIVE,
    NOT_SUPPORTED,
    OUT_OF_TOLERANCE,
    PASSED,
    CheckRecord,
    Collapse,
    Figures,
    Manifest,
    Recommendation,
    Report,
    SweepLatency,
    SweepReport,
    SweepResult,
    SweepRow,
    written,
)
from qconvert.settings import DEFAULT_OUT_ROOT, OutputSettings, RunConfig, SweepConfig
from qconvert.settings import bits_from_text as bits_from_text  # re-exported: tests and old callers
from qconvert.settings import modes_from_text as modes_from_text
from qconvert.tolerance import Tolerance

if TYPE_CHECKING:
    from qconvert.artifacts import ArtifactDir
    from qconvert.calibrate import Dataset
    from qconvert.sources import LoadedModel
    from qconvert.targets import Target

log = logging.getLogger(__name__)

TRIALS_DIR = "trials"
BASELINE = "fp32"
MAX_DEFAULT_WORKERS = 4  # each worker holds the model in torch and onnxruntime at once
RAY_TASK_CPUS = 1  # CPUs a Ray trial reserves, and the threads it runs torch and onnxruntime with
SWEEP_JSON, SWEEP_PNG, SWEEP_HTML = "sweep.json", "sweep.png", "sweep.html"

# progress(stage, message, done, total), as pipeline.Progress
Progress = Callable[[str, str, "int | None", "int | None"], None]


def _no_progress(stage: str, message: str, done: int | None = None, total: int | None = None) -> None:
    return None


# --- parsing the CLI's lists -------------------------------------------------------------------


# --- results -----------------------------------------------------------------------------------


def recommend(rows: Iterable[SweepRow]) -> Recommendation:
    """Among quantized settings that hold the tolerance: the smallest file (ties: faster, then
    name), and the fastest one that is faster than fp32 (ties: smaller, then name)."""
    holding = [r for r in rows if r.quantized and r.holds]
    inf = float("inf")
    smallest = min(
        holding,
        key=lambda r: (r.size_ratio if r.size_ratio is not None else inf, r.latency_ratio or inf, r.name),
        default=None,
    )
    faster = [r for r in holding if r.latency_ratio is not None and r.latency_ratio < 1.0]
    fastest = min(
        faster,
        key=lambda r: (r.latency_ratio, r.size_ratio if r.size_ratio is not None else inf, r.name),
        default=None,
    )
    return Recommendation(smallest, fastest)


def sweep_verdict(rows: Iterable[SweepRow]) -> str:
    """PASSED when a quantized setting holds the tolerance, else INCONCLUSIVE when one may (its
    intervals straddle a bound), else FAILED."""
    statuses = {r.status for r in rows if r.quantized}
    return PASSED if PASSED in statuses else INCONCLUSIVE if INCONCLUSIVE in statuses else "failed"


# --- trials ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One planned setting: a RunConfig to run, or the target's reason it cannot."""

    name: str
    bits: int
    mode: str | None
    run: RunConfig | None = None
    unsupported: str | None = None


@dataclass(frozen=True)
class TrialJob:
    """What a worker needs for one trial (picklable: it crosses into a process or a Ray task)."""

    name: str
    run: RunConfig
    heldout: Dataset  # for the collapse probe: the held-out samples export validates on
    threads: int | None  # torch/onnxruntime threads in the worker; None: leave the defaults
    log_level: int = logging.WARNING  # the sweep's own, so a worker logs what an export would


@dataclass(frozen=True)
class TrialOutcome:
    """What came back from one trial."""

    name: str
    status: str  # passed | out_of_tolerance | inconclusive | error
    ran_in: str | None = None  # the OUT_DIR the export wrote (node-local for Ray)
    report: dict[str, Any] | None = None
    manifest: Manifest | None = None
    error: str | None = None
    error_stage: str | None = None
    error_class: str | None = None
    collapse: Collapse | None = None
    collapse_error: str | None = None
    seconds: float = 0.0
    files: dict[str, bytes] | None = None  # relative path -> content, when shipped


def plan_trials(config: SweepConfig, target: Target, base: RunConfig) -> list[Trial]:
    """The trials in table order: each bit width as given, then each mode. Without --modes, the
    target's default mode per bit width; with --modes, every listed mode (unsupported ones become
    rows that say why, in the target's own words)."""
    trials: list[Trial] = []
    for bits in config.bits:
        if not target.modes.get(bits):
            try:
                target.resolve_mode(bits, None)
            except ConfigError as e:
                trials.append(Trial(f"{bits}bit", bits, None, unsupported=str(e)))
            continue
        modes: Sequence[str | None] = [None] if config.modes is None else config.modes
        for wanted in modes:
            try:
                mode = target.resolve_mode(bits, wanted)
            except ConfigError as e:
                trials.append(Trial(f"{bits}bit-{wanted}", bits, wanted, unsupported=str(e)))
                continue
            trials.append(
                Trial(
                    f"{bits}bit-{mode}",
                    bits,
                    mode,
                    run=replace(base, quantization=replace(base.quantization, bits=bits, mode=mode)),
                )
            )
    return trials


def default_workers(trials: int) -> int:
    """One worker per usable core, at most MAX_DEFAULT_WORKERS and at most one per trial."""
    return max(1, min(trials, _usable_cores(), MAX_DEFAULT_WORKERS))


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def limit_threads(threads: int) -> None:
    """Make this process's torch and onnxruntime use `threads` threads, so that N workers on a
    machine share its cores instead of each taking all of them. torch reads OMP_NUM_THREADS when
    it is imported (a trial on an ONNX source never imports it); onnxruntime reads
    ORT_INTRA_OP_NUM_THREADS when a session is created (measured on onnxruntime 1.32; versions
    that ignore it use one thread per physical core)."""
    for var in ("ORT_INTRA_OP_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ["ORT_INTER_OP_NUM_THREADS"] = "1"
    torch = sys.modules.get("torch")
    if torch is not None:  # already imported (a reused Ray worker): tell it directly
        torch.set_num_threads(threads)


def _configure_worker_logging(level: int) -> None:
    """A fresh worker process logs like the command that started it: the same level and format,
    with torch's own loggers kept to errors unless debugging. torch sets its loggers' levels when
    it is imported, so it is imported first (every trial's prepare stage imports it anyway)."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if level > logging.DEBUG:
        import torch  # noqa: F401  (imported for its logging set-up; after limit_threads)

        for name in ("torch", "torch.onnx", "onnxscript", "onnx_ir"):
            logging.getLogger(name).setLevel(logging.ERROR)


def run_trial(job: TrialJob) -> TrialOutcome:
    """Run one trial: export (which writes its OUT_DIR), then the collapse probe on the held-out
    data. A QConvertError becomes an `error` outcome; anything else is a bug and propagates."""
    from qconvert.pipeline import export

    if job.threads is not None:
        limit_threads(job.threads)
        _configure_worker_logging(job.log_level)
    start = time.perf_counter()
    try:
        result = export(job.run)
    except QConvertError as e:
        return TrialOutcome(
            job.name,
            ERROR,
            error=str(e),
            error_stage=e.stage,
            error_class=type(e).__name__,
            seconds=time.perf_counter() - start,
        )
    collapse, collapse_error = _probe_collapse(result.out_dir, result.manifest_record, job.heldout)
    return TrialOutcome(
        job.name,
        {"passed": PASSED, "failed": OUT_OF_TOLERANCE}.get(result.verdict, INCONCLUSIVE),
        ran_in=str(result.out_dir),
        report=result.report,
        manifest=result.manifest_record,
        collapse=collapse,
        collapse_error=collapse_error,
        seconds=time.perf_counter() - start,
    )


def run_trial_shipped(job: TrialJob) -> TrialOutcome:
    """A trial on a machine that may not share the sweep's filesystem (a Ray node): export into a
    node-local temporary folder and send the folder's files back with the outcome."""
    local = Path(tempfile.mkdtemp(prefix="qconvert-trial-"))
    try:
        outcome = run_trial(
            replace(job, run=replace(job.run, output=OutputSettings(out_dir=local / job.name)))
        )
        if outcome.ran_in is None:
            return outcome
        root = Path(outcome.ran_in)
        files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        return replace(outcome, files=files)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def _probe_collapse(
    out_dir: Path, manifest: Manifest, heldout: Dataset
) -> tuple[Collapse | None, str | None]:
    """The collapse probe of model.onnx against reference.onnx on the held-out data, run the way
    `qconvert validate` of the folder would run the model here (validation/standin.for_folder): exact
    Q/DQ arithmetic where the target's provider is not here, and the same fp16/bf16 rounding stand-in
    where this machine has no kernels for that type. An implicit-int8 model.onnx is the fp32 graph,
    so the probe is not run on it."""
    from qconvert.validation.collapse import probe_collapse
    from qconvert.validation.standin import emulated, for_folder

    decision = for_folder(out_dir, manifest)
    if decision.stand_in == "implicit":
        return None, "implicit int8: model.onnx is the fp32 graph; TensorRT picks precisions on the GPU"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            candidate = out_dir / "model.onnx"
            if decision.emulated is not None:
                external = manifest.quantization.external_data
                candidate, _ = emulated(decision.emulated, candidate, Path(tmp), external)
            result = probe_collapse(
                out_dir / "reference.onnx",
                candidate,
                heldout,
                optimize=decision.native,
                providers=decision.providers,
            )
    except QConvertError as e:
        return None, f"{e.stage}: {e}"
    return written(Collapse, result.as_json(), "collapse probe"), None


# --- executors ---------------------------------------------------------------------------------


def _run_local(jobs: list[TrialJob], workers: int, progress: Progress) -> list[TrialOutcome]:
    """Trials in spawned worker processes (in this process when there is one worker)."""
    total = len(jobs)
    message = (
        f"running {total} trial(s) on {workers} worker process(es)"
        if workers > 1
        else f"running {total} trial(s)"
    )
    progress("trials", message, 0, total)
    outcomes: list[TrialOutcome] = []
    if workers == 1:
        for job in jobs:
            outcomes.append(run_trial(job))
            progress("trials", message, len(outcomes), total)
        return outcomes

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = [pool.submit(run_trial, job) for job in jobs]
        for future in as_completed(futures):
            outcome = future.result()
            log.info("trial %s: %s (%.1f s)", outcome.name, outcome.status, outcome.seconds)
            outcomes.append(outcome)
            progress("trials", message, len(outcomes), total)
    except BaseException:
        _stop_now(pool)  # Ctrl-C, SIGTERM, a failed trial: not after the running trials end
        raise
    pool.shutdown(wait=True)
    return outcomes


def _stop_now(pool: Any) -> None:
    """Stop the worker processes at once: waiting for the running trials (minutes on a big model) is
    what made Ctrl-C take 5-13 s. Their files are all in the sweep's temporary folder, removed after."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # CPython's pid -> Process map
    for process in procs:
        process.kill()  # SIGTERM would make each worker print its own Terminated traceback
    pool.shutdown(wait=False, cancel_futures=True)
    for process in procs:
        process.join(timeout=1.0)


def _run_ray(jobs: list[TrialJob], address: str | None, progress: Progress) -> list[TrialOutcome]:
    """Trials as Ray tasks, one CPU each; Ray decides where and how many run at once."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--executor ray needs Ray, which is not installed here: pip install 'qconvert[ray]' "
            "(or pip install ray), or use the local executor."
        ) from None
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"--ray-address {address}" if address else "--executor ray (no --ray-address)"
            raise ConfigError(
                f"{where}: cannot connect to a Ray cluster ({errors.brief(e)}). Start one with `ray start "
                "--head`, or give its address as --ray-address HOST:PORT."
            ) from None
    total = len(jobs)
    message = f"running {total} trial(s) as Ray tasks"
    progress("trials", message, 0, total)
    remote = ray.remote(num_cpus=RAY_TASK_CPUS)(run_trial_shipped)
    pending = [remote.remote(job) for job in jobs]
    outcomes: list[TrialOutcome] = []
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            outcomes.append(ray.get(ready[0]))
            progress("trials", message, len(outcomes), total)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()
    return outcomes


# --- the sweep ---------------------------------------------------------------------------------


def sweep(config: SweepConfig, progress: Progress | None = None) -> SweepResult:
    """Run every (bits, mode) trial of `config`, time them against fp32, and write OUT_DIR:
    trials/<name>/ (one export each), sweep.json, sweep.png and sweep.html.

    Raises QConvertError (exit 2) on bad input, and when no trial could run at all; a sweep in
    which some trials fail returns rows that say so."""
    from qconvert.artifacts import ArtifactDir, check_output_dir
    from qconvert.targets import TARGETS

    report_progress = progress or _no_progress
    start = time.perf_counter()
    target = TARGETS.get(config.target)
    target.bind(dict(config.target_options))  # refuse bad options before any work (each trial binds its own)
    if config.out_dir is not None:
        check_output_dir(config.out_dir, config.force)
    base = _base_run_config(config)
    trials = plan_trials(config, target, base)
    runnable = [t for t in trials if t.run is not None]
    if not runnable:
        raise ConfigError(
            f"--target {target.name} supports none of the settings asked for: "
            + "; ".join(f"{t.name}: {t.unsupported}" for t in trials)
        )

    report_progress("load", "loading the model and the data", None, None)
    loaded, heldout = _model_and_heldout(base)
    out_dir = config.out_dir or DEFAULT_OUT_ROOT / f"{loaded.name}-{target.name}-sweep"
    user_files = [
        *loaded.files,
        *(Path(p) for p in (config.calibration, config.data) if p and Path(p).exists()),
    ]

    with ArtifactDir(out_dir, force=config.force, inputs=user_files) as art:
        trials_root = art.path(TRIALS_DIR)
        trials_root.mkdir()  # made here, so that no trial's clean-up removes it
        workers = _workers(config, len(runnable))
        ran = _run_trials(config, runnable, trials_root, heldout, workers, report_progress)
        by_name = {o.name: o for o in ran}
        if all(o.status == ERROR for o in ran):
            raise _all_failed(ran)
        for outcome in ran:
            _settle_trial(art, outcome, out_dir / TRIALS_DIR / outcome.name)

        report_progress("latency", "timing fp32 and every setting, interleaved in one process", None, None)
        timing = _time_settings(art, ran, heldout, config)
        rows = _rows(trials, by_name, timing)
        recommendation = recommend(rows)
        notes = _sweep_notes(config, ran, workers, timing, rows)
        verdict = sweep_verdict(rows)
        report = SweepReport(
            source=loaded.origin,
            target=target.name,
            bits=tuple(config.bits),
            modes=config.modes,
            tolerance=config.tolerance,
            executor=config.executor,
            workers=workers if config.executor == "local" else None,
            held_out_samples=len(heldout),
            labels=heldout.labels is not None,
            latency=written(SweepLatency, timing.as_json(), "sweep.json: latency"),
            rows=tuple(rows),
            recommendation=recommendation.record(),
            passed=verdict == PASSED,
            verdict=verdict,
            notes=tuple(notes),
            seconds=time.perf_counter() - start,
        )
        report_progress("report", "writing sweep.json, sweep.png and sweep.html", None, None)
        from qconvert.sweep_report import render_html, render_png

        png = render_png(report)
        art.write_bytes(SWEEP_PNG, png)
        art.write_text(SWEEP_HTML, render_html(report, png))
        art.write_json(SWEEP_JSON, report.to_json())
        art.commit()
    return SweepResult(out_dir, tuple(rows), recommendation, report, time.perf_counter() - start)


def _run_trials(
    config: SweepConfig, runnable: list[Trial], root: Path, heldout: Dataset, workers: int, progress: Progress
) -> list[TrialOutcome]:
    """Export every runnable trial into root/<name> on the chosen executor; the outcomes in trial order."""
    jobs = [
        TrialJob(
            t.name,
            replace(t.run, output=replace(t.run.output, out_dir=root / t.name)),
            heldout,
            threads=_job_threads(config.executor, workers),
            log_level=logging.getLogger().getEffectiveLevel(),
        )
        for t in runnable
        if t.run is not None
    ]
    if config.executor == "ray":
        # a Ray worker may run on another machine, in another folder: give it absolute paths
        jobs = [replace(j, run=_absolute_paths(j.run)) for j in jobs]
        outcomes = _run_ray(jobs, config.ray_address, progress)
    else:
        outcomes = _run_local(jobs, workers, progress)
    by_name = {o.name: o for o in outcomes}
    return [by_name[j.name] for j in jobs]


def _model_and_heldout(base: RunConfig) -> tuple[LoadedModel, Dataset]:
    """The model, and the held-out set every trial validates on (static trials also need calibration
    data; a trial without it fails on its own row). Each trial warns for itself where the held-out
    data is too few for its own bit width, so this load does not."""
    from qconvert.pipeline import load_data, model_inputs
    from qconvert.sources import load_source

    loaded = load_source(base.source, base.inputs, task=base.task)
    tolerance = Tolerance.for_bits(base.bits, base.tolerance, text=bool(loaded.token_outputs))
    _, heldout, _ = load_data(base, loaded, model_inputs(loaded), "dynamic", tolerance, warn=False)
    return loaded, heldout


def _base_run_config(config: SweepConfig) -> RunConfig:
    """The RunConfig every trial starts from (each trial is `replace()` of it with its bits and
    mode): the sweep's base, without the sweep folder's -o/--force (each trial gets its own folder)."""
    return config.base.evolve(bits=config.bits[0], out_dir=None, force=False)


def _workers(config: SweepConfig, trials: int) -> int:
    if config.executor != "local":
        return 1
    return min(config.workers, trials) if config.workers else default_workers(trials)


def _job_threads(executor: str, workers: int) -> int | None:
    """Threads for torch and onnxruntime in a trial; None: the trial runs in this process, which
    keeps its defaults."""
    if executor == "ray":
        return RAY_TASK_CPUS
    return _threads_per_worker(workers) if workers > 1 else None


def _threads_per_worker(workers: int) -> int:
    return max(1, _usable_cores() // workers)


def _absolute_paths(run: RunConfig) -> RunConfig:
    """SOURCE, --calibration, --data and --tokenizer as absolute paths where they name files here."""

    def absolute(spec: str | None) -> str | None:
        if spec is None:
            return None
        if Path(spec).exists():
            return str(Path(spec).resolve())
        where, sep, attr = spec.rpartition(":")
        if sep and where.endswith(".py") and Path(where).is_file():
            return f"{Path(where).resolve()}:{attr}"
        return spec

    return run.evolve(
        source=absolute(run.source),
        calibration=absolute(run.calibration),
        data=absolute(run.data),
        data_options=replace(run.data_options, tokenizer=absolute(run.data_options.tokenizer)),
    )


def _all_failed(outcomes: list[TrialOutcome]) -> QConvertError:
    """No trial ran: the first trial's error, in its own class, listing every trial's message."""
    first = outcomes[0]
    cls = getattr(errors, first.error_class or "", None)
    if not (isinstance(cls, type) and issubclass(cls, QConvertError)):
        cls = QConvertError
    if len({o.error for o in outcomes}) == 1:
        return cls(f"every trial failed the same way: {first.error}")
    return cls("every trial failed: " + " | ".join(f"{o.name}: {o.error}" for o in outcomes))


def _settle_trial(art: ArtifactDir, outcome: TrialOutcome, final: Path) -> None:
    """Put a trial's folder in place inside the sweep's temporary folder (writing the files a Ray
    task sent back) and make its manifest name the folder it will have once the sweep commits."""
    if outcome.ran_in is None or outcome.manifest is None:
        return
    rel = f"{TRIALS_DIR}/{outcome.name}"
    if outcome.files is not None:
        for name, content in outcome.files.items():
            art.write_bytes(f"{rel}/{name}", content)
    manifest = replace(
        outcome.manifest,
        command=outcome.manifest.command.replace(outcome.ran_in, str(final)),
        settings={**outcome.manifest.settings, "out_dir": str(final)},
    )
    art.write_json(f"{rel}/qconvert.json", manifest.to_json())


@dataclass(frozen=True)
class Timing:
    """Latency of fp32 and every trial that produced a model, measured together after the trials."""

    provider: str | None
    batch: int
    repeats: int
    p50_ms: dict[str, float] = field(default_factory=dict)  # "fp32" and trial names

    def ratio(self, name: str) -> float | None:
        if name not in self.p50_ms or BASELINE not in self.p50_ms:
            return None
        return self.p50_ms[name] / self.p50_ms[BASELINE]

    def as_json(self) -> dict[str, Any]:
        return {
            "how": "measured by the sweep after every trial finished: fp32 and each setting timed "
            "interleaved in one process on the same inputs, nothing else of the sweep running",
            "provider": self.provider,
            "batch": self.batch,
            "repeats": self.repeats,
            "p50_ms": dict(self.p50_ms),
        }


def _time_settings(
    art: ArtifactDir, outcomes: list[TrialOutcome], heldout: Dataset, config: SweepConfig
) -> Timing:
    """p50 latency of fp32 and of each trial's model.onnx, interleaved, on the trial's providers
    (the first trial's reference.onnx stands for fp32: every trial exported the same model)."""
    from qconvert.benchmark import interleaved_latency
    from qconvert.pipeline import latency_feed
    from qconvert.runtime import make_session, manifest_providers

    done = [(o.name, o.manifest) for o in outcomes if o.ran_in is not None and o.manifest is not None]
    if not done:
        return Timing(None, config.latency_batch, config.latency_repeats)
    feed = latency_feed(heldout, config.latency_batch)
    runners: dict[str, Callable[[], object]] = {}
    provider = None
    for name, manifest in done:
        folder = art.path(f"{TRIALS_DIR}/{name}")
        providers = manifest_providers(folder, manifest)
        if BASELINE not in runners:
            fp32 = make_session(folder / "reference.onnx", providers)
            runners[BASELINE] = _runner(fp32.inner, feed)
        session = make_session(folder / "model.onnx", providers)
        provider = provider or session.used
        runners[name] = _runner(session.inner, feed)
    lat = interleaved_latency(runners, repeats=config.latency_repeats)
    return Timing(
        provider, config.latency_batch, config.latency_repeats, {n: t.p50_ms for n, t in lat.items()}
    )


def _runner(session: Any, feed: dict[str, Any]) -> Callable[[], object]:
    return lambda: session.run(None, feed)


def _rows(trials: list[Trial], outcomes: dict[str, TrialOutcome], timing: Timing) -> list[SweepRow]:
    """The fp32 baseline, then one row per planned trial, in plan order."""
    reports = {  # each trial's report.json, read once (a renamed key is a SourceError naming it)
        t.name: Report.from_json(outcome.report, f"{TRIALS_DIR}/{t.name}/report.json")
        for t in trials
        if (outcome := outcomes.get(t.name)) is not None and outcome.report is not None
    }
    rows = [_trial_row(t, outcomes.get(t.name), reports.get(t.name), timing) for t in trials]
    return [_baseline_row(next(iter(reports.values()), None), timing), *rows]


def _baseline_row(report: Report | None, timing: Timing) -> SweepRow:
    """fp32 itself: the exported ONNX against the original (export fidelity), size and latency 1.0x."""
    if report is None:
        return SweepRow(BASELINE, None, None, BASELINE_STATUS)
    fidelity = report.export_fidelity
    return SweepRow(
        BASELINE,
        None,
        None,
        BASELINE_STATUS,
        accuracy=None if report.accuracy is None else report.accuracy.fp32_onnx,
        agreement=_worst(fidelity, "top1_agreement"),
        cosine=_worst(fidelity, "cosine"),
        size_bytes=report.size.fp32_bytes,
        size_ratio=1.0,
        latency_ms=timing.p50_ms.get(BASELINE),
        latency_ratio=1.0 if BASELINE in timing.p50_ms else None,
    )


def _worst(outputs: dict[str, Any], metric: str) -> float | None:
    values = [m[metric] for m in outputs.values() if isinstance(m, dict) and metric in m]
    return min(values) if values else None


def _worst_interval(validation: Figures, metric: str) -> tuple[float, float] | None:
    """The interval of `metric` on the output where it is worst (the one `_worst` shows)."""
    outputs = validation.outputs
    worst = min(
        (n for n, m in outputs.items() if metric in m), key=lambda n: outputs[n][metric], default=None
    )
    interval = validation.intervals.get(worst, {}).get(metric) if worst else None
    return None if interval is None else (interval.low, interval.high)


def _trial_row(trial: Trial, outcome: TrialOutcome | None, report: Report | None, timing: Timing) -> SweepRow:
    if trial.unsupported is not None or outcome is None:
        return SweepRow(trial.name, trial.bits, trial.mode, NOT_SUPPORTED, reason=trial.unsupported)
    if outcome.status == ERROR or report is None:
        return SweepRow(
            trial.name,
            trial.bits,
            trial.mode,
            ERROR,
            reason=f"({outcome.error_stage}) {outcome.error}",
            seconds=outcome.seconds,
        )
    validation = report.validation
    failed = [_unpassed(c) for c in validation.checks if not c.passed]
    return SweepRow(
        trial.name,
        trial.bits,
        report.mode,
        outcome.status,
        reason="; ".join(failed) or None,
        accuracy=None if report.accuracy is None else report.accuracy.model,
        agreement=_worst(validation.outputs, "top1_agreement"),
        cosine=_worst(validation.outputs, "cosine"),
        agreement_interval=_worst_interval(validation, "top1_agreement"),
        cosine_interval=_worst_interval(validation, "cosine"),
        size_bytes=report.size.model_bytes,
        size_ratio=report.size.ratio,
        latency_ms=timing.p50_ms.get(trial.name),
        latency_ratio=timing.ratio(trial.name),
        trial_latency_ratio=report.latency.ratio_p50,
        collapse=outcome.collapse,
        collapse_error=outcome.collapse_error,
        out_dir=f"{TRIALS_DIR}/{trial.name}",
        seconds=outcome.seconds,
        notes=report.notes,
    )


def _unpassed(check: CheckRecord) -> str:
    """A check that did not pass, for a row's reason; an inconclusive one says what would settle it."""
    text = f"{check.output}: {check.metric} = {check.measured:.4g}, needs {check.bound}"
    if check.verdict != INCONCLUSIVE:
        return text
    settle = check.samples_to_settle
    return text + (
        f" (inconclusive: about {settle} held-out samples would settle it)" if settle else " (inconclusive)"
    )


def _sweep_notes(
    config: SweepConfig, outcomes: list[TrialOutcome], workers: int, timing: Timing, rows: list[SweepRow]
) -> list[str]:
    notes = []
    if timing.provider is not None:
        notes.append(
            f"latency: p50 at batch {timing.batch} on {timing.provider}, {timing.repeats} runs each, measured "
            "after the trials with fp32 and every setting interleaved in one process; the figure each trial "
            "took for itself (trial_latency_ratio in sweep.json) ran alongside other trials and is noisier"
        )
    wanted = {o.manifest.providers[0].name for o in outcomes if o.manifest and o.manifest.providers}
    if timing.provider is not None and wanted and timing.provider not in wanted:
        notes.append(
            f"{', '.join(sorted(wanted))} is not installed here: latency comes from {timing.provider} and says "
            f"nothing about {config.target} speed; accuracy is the graph's exact Q/DQ arithmetic"
        )
    if config.executor == "local" and workers > 1:
        notes.append(
            f"{workers} trials ran at a time, each limited to {_threads_per_worker(workers)} thread(s); "
            "--workers 1 runs them one after another"
        )
    if any(r.collapse_error for r in rows):
        notes.extend(f"collapse probe, {r.name}: {r.collapse_error}" for r in rows if r.collapse_error)
    return notes
