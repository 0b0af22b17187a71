"""The only door from the explorer to the engine: load a model, stream a completion, measure.

`Backend` is what the app needs; `EngineBackend` implements it on the real engine and
`ScriptedBackend` streams canned text without a model (tests, benchmarks, demos). Every
method may block for a long time and is called from worker threads, never from the UI thread.
`tests/tui/test_backend_contract.py` runs the same behaviours against both.

Each bank is served by the model it names (`model_for`): a session can hold banks of several
models (the shipped SmolLM2 and Gemma banks), each model loaded once, when a bank of it is first
shown. With `--model` every bank is served by that one model, and a bank made with another is
refused in one line. Steering works by forward hooks, so two model calls at once would see each
other's vectors: `EngineBackend` runs one model call at a time (`ModelTurns`), generations go
first, and long measurements are cut into chunks so that a generation can slip in between.
"""

from __future__ import annotations

import math
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from melbo_tui.compose import Composition
from melbo_tui.decoding import GenerationResult
from melbo_tui.errors import MelboError, ModelError
from melbo_tui.kinds import Metric, Objective
from melbo_tui.tui.settings import ExploreSettings

if TYPE_CHECKING:
    import torch

    from melbo_tui.bank import VectorBank
    from melbo_tui.jobs import OrthoSource
    from melbo_tui.melbo import MelboConfig
    from melbo_tui.models import LoadedModel, ModelRequest

OnText = Callable[[str], None]
ShouldStop = Callable[[], bool]
OnProgress = Callable[[int, int], None]

# What `metrics` measures (`melbo_tui.metrics.bank_metrics`): every metric that needs the model
MEASURABLE = tuple(str(m) for m in Metric if m.needs_model)


@dataclass(frozen=True)
class JobProgress:
    """Where a background job is: `done` of `count` vectors saved, `step` of `steps` of the current one."""

    done: int
    count: int
    step: int
    steps: int
    loss: float


OnJobProgress = Callable[[JobProgress], None]


def _shell(words: list[str]) -> str:
    return shlex.join(words)


def _absolute(path: Path) -> str:
    return str(path.resolve())


@dataclass(frozen=True)
class OrthoJob:
    """MELBO-ortho from row `base_index` of the bank at `bank_path`, on the bank's prompts, into `out`.

    What `melbo-tui ortho` does with the same arguments (`command`): the same vectors, then every
    row measured and stored in the file.
    """

    model: str  # the model it runs on (`Backend.model_for` of the bank)
    bank: VectorBank
    bank_path: Path
    base_index: int
    count: int
    out: Path
    objective: Objective = Objective.CONTINUATION

    @property
    def prompts(self) -> list[str]:
        return list(self.bank.meta.prompts)

    def timing_key(self) -> str:
        """What the time per vector depends on (the dialog times the job again when it changes)."""
        return f"ortho {self.model} {self.bank_path} {self.base_index} {self.objective}"

    def command(self, model_flags: tuple[str, ...] = (), show: Callable[[Path], str] = _absolute) -> str:
        """The equivalent command line: what a new bank records as `created_by` (`show` writes the paths)."""
        objective = ["--objective", self.objective.value] if self.objective != Objective.CONTINUATION else []
        return _shell(["melbo-tui", "ortho", show(self.bank_path), "--base", str(self.base_index),
                       "--num-vectors", str(self.count), *objective, "--out", show(self.out), *model_flags])


@dataclass(frozen=True)
class MelboJob:
    """A fresh MELBO run from inside the explorer: `count` vectors on one prompt, saved per batch into `out`."""

    model: str  # the model it trains on (`Backend.model_for` of the bank it was started from)
    prompt: str
    system: str | None
    raw: bool
    source_layer: int
    target_layer: int
    radius: float
    out: Path
    count: int = 8
    steps: int = 300
    batch_vectors: int = 4

    def timing_key(self) -> str:
        """What the time per vector depends on (the dialog times the job again when it changes)."""
        return f"melbo {self.model} {self.prompt!r} {self.source_layer} {self.target_layer} {self.steps} {self.batch_vectors}"

    def command(self, model_flags: tuple[str, ...] = (), show: Callable[[Path], str] = _absolute) -> str:
        """The equivalent `melbo-tui train` command line: what the new bank records as `created_by`."""
        words = ["melbo-tui", "train", "--prompt", self.prompt, *(["--system", self.system] if self.system is not None else []),
                 *(["--raw"] if self.raw else []), "--source-layer", str(self.source_layer), "--target-layer",
                 str(self.target_layer), "--radius", f"{self.radius:g}", "--num-vectors", str(self.count), "--steps",
                 str(self.steps), "--batch-vectors", str(self.batch_vectors), "--out", show(self.out), *model_flags]
        return _shell(words)


Job = OrthoJob | MelboJob


@dataclass(frozen=True)
class GenerationRequest:
    bank: VectorBank
    target: Composition
    settings: ExploreSettings


@dataclass(frozen=True)
class BatchRequest:
    """Completions of several targets of one bank on one set of settings (the explorer's read-ahead)."""

    bank: VectorBank
    targets: tuple[Composition, ...]
    settings: ExploreSettings


OnCompleted = Callable[[Composition, GenerationResult], None]


@dataclass(frozen=True)
class MetricsRequest:
    """Measure metric `names` (`melbo_tui.bank.Metric` values) for every row of `bank` on one prompt."""

    bank: VectorBank
    prompt: str
    system: str | None
    raw: bool
    names: tuple[str, ...]


@dataclass(frozen=True)
class MeasuredColumns:
    """`values`: `{name: [N floats]}`; `unsteered`: what no vector scores on the same prompt (the value to beat)."""

    values: dict[str, list[float]]
    unsteered: dict[str, float]


class Backend(Protocol):
    """What the explorer asks of a model. Errors a user can cause raise `MelboError`."""

    def model_for(self, bank: VectorBank) -> str:
        """The name of the model that serves `bank` (what loads for it, and part of its completions' cache key)."""
        ...

    def model_flags(self, model: str) -> tuple[str, ...]:
        """The command-line flags that load `model` (for the command line a job records)."""
        ...

    def load(self, model: str) -> str:
        """Load `model` (blocking; once); returns a one-line description."""
        ...

    def check_bank(self, bank: VectorBank) -> None:
        """Raise `BankError` if `bank` cannot be served: made for a differently shaped model, or (`--model`) another model."""
        ...

    def stream(self, request: GenerationRequest, on_text: OnText, should_stop: ShouldStop) -> GenerationResult:
        """Generate, calling `on_text` per decoded piece, until done or `should_stop()`."""
        ...

    def complete(self, request: BatchRequest, on_completed: OnCompleted, should_stop: ShouldStop) -> None:
        """Complete the targets in batches, lowest priority: `on_completed` hears each finished one.

        Gives way to any generation asked for after it began (at the next decode step) and to
        `should_stop`: it returns, the batch then in progress dropped; the caller asks again later.
        """
        ...

    def metrics(self, request: MetricsRequest, should_stop: ShouldStop, on_progress: OnProgress) -> MeasuredColumns:
        """The requested names this backend can measure (others are left out), and the unsteered model's values.

        A stop returns only the columns already complete (usually none): never a partial column.
        """
        ...

    def target_metrics(self, bank: VectorBank, target: Composition, settings: ExploreSettings) -> dict[str, float]:
        """`norm` of a composed target and what KL it can measure (`kl` to the base, `kl_unsteered`) on the settings' prompt."""
        ...

    def estimate(self, job: Job) -> float:
        """Seconds per vector the job will take on this model and machine (timed, a few seconds at most)."""
        ...

    def run_ortho(self, job: OrthoJob, on_progress: OnJobProgress, should_stop: ShouldStop) -> str:
        """MELBO-ortho into `job.out`, saved after every vector, measured at the end; returns a summary line."""
        ...

    def run_melbo(self, job: MelboJob, on_progress: OnJobProgress, should_stop: ShouldStop) -> str:
        """Train MELBO vectors into `job.out`, saved after each batch (so a stop leaves a valid bank, or none)."""
        ...


def compose_target(bank: VectorBank, target: Composition) -> torch.Tensor | None:
    """The steering vector `[d_model]` a target stands for (None for the unsteered baseline)."""
    if not target.rows:
        return None
    from melbo_tui.compose import compose

    return compose(bank.vectors, target)


def _vector_or_zero(bank: VectorBank, target: Composition) -> torch.Tensor:
    """A batch row's vector: adding zero is not steering (the same logits, bit for bit)."""
    import torch

    vector = compose_target(bank, target)
    return torch.zeros(bank.hidden_size) if vector is None else vector


class ModelTurns:
    """One model call at a time; a waiting generation goes before the next chunk of a measurement.

    `waiting` counts generations queued for the model. It is changed under its own lock: worker
    threads increment and decrement it concurrently, and `+=` on an attribute is not atomic.
    """

    def __init__(self) -> None:
        self.model = threading.Lock()
        self._count = threading.Lock()
        self._waiting = 0
        self._generations = 0  # generations asked for so far

    @property
    def waiting(self) -> int:
        with self._count:
            return self._waiting

    @property
    def generations(self) -> int:
        with self._count:
            return self._generations

    def _add_waiting(self, delta: int) -> None:
        with self._count:
            self._waiting += delta
            self._generations += max(delta, 0)

    def gives_way(self, should_stop: ShouldStop) -> ShouldStop:
        """For the lowest-priority work: stop once asked to, or once any generation is asked for after now."""
        since = self.generations

        def stop() -> bool:
            return should_stop() or self.generations != since

        return stop

    @contextmanager
    def generation(self) -> Iterator[None]:
        """Hold the model for a generation, announced so that measurements and jobs yield."""
        self._add_waiting(1)
        try:
            self.model.acquire()
        finally:
            self._add_waiting(-1)
        try:
            yield
        finally:
            self.model.release()

    @contextmanager
    def measurement(self, should_stop: ShouldStop) -> Iterator[None]:
        """Hold the model for one chunk of work, after any generation waiting for it."""
        while self.waiting and not should_stop():
            time.sleep(0.02)
        with self.model:
            yield

    def yield_to_generations(self, should_stop: ShouldStop) -> None:
        """Called with the model held (between a job's steps, when no hook is live): let waiting generations run."""
        if not self.waiting:
            return
        self.model.release()
        try:
            while self.waiting and not should_stop():
                time.sleep(0.005)
        finally:
            self.model.acquire()


def read_ahead_batch(device_type: str) -> int:
    """Completions per read-ahead call: on a CPU a batch of 4 takes ~5 s for 48 tokens on the embedded
    model (2.4 s one at a time; 8 take 6.2 s), so the nearest rows are ready soon; an accelerator
    batches more for about the time of one."""
    return 4 if device_type == "cpu" else 16


class EngineBackend:
    """The real thing: transformers models loaded from a `melbo_tui.models.ModelRequest`.

    Without a model named in the request every bank is served by the model it records; with one
    (`melbo-tui open --model M`) every bank is served by M. The request's device, dtype and
    `threads` apply to every model loaded; the description says how many threads torch uses.
    """

    METRICS_CHUNK = 32  # rows per locked model call; a generation waits at most one chunk

    def __init__(self, request: ModelRequest | None = None) -> None:
        from melbo_tui.models import ModelRequest

        self.request = request or ModelRequest()
        self._models: dict[str, LoadedModel] = {}
        self._turns = ModelTurns()

    @property
    def fixed(self) -> str | None:
        """The one model every bank is served by (`--model`), else None."""
        from melbo_tui.models import canonical_name

        return canonical_name(self.request.name) if self.request.name is not None else None

    def model_for(self, bank: VectorBank) -> str:
        from melbo_tui.models import canonical_name

        return self.fixed or canonical_name(bank.meta.model)

    def model_flags(self, model: str) -> tuple[str, ...]:
        from melbo_tui.models import EMBEDDED_NAME

        r = self.request
        flags = [*(["--model", model] if model != EMBEDDED_NAME else []), *(["--device", r.device] if r.device != "auto" else []),
                 *(["--dtype", r.dtype] if r.dtype != "auto" else []), *(["--revision", r.revision] if r.revision else []),
                 *(["--trust-remote-code"] if r.trust_remote_code else [])]
        return tuple(flags)

    def load(self, model: str) -> str:
        import dataclasses

        import torch

        lm = self._models.get(model)
        if lm is None:
            lm = dataclasses.replace(self.request, name=model).load()
            self._models[model] = lm
        threads = torch.get_num_threads()
        return (f"{lm.name.removeprefix('embedded:')} {lm.device} {str(lm.dtype).removeprefix('torch.')} "
                f"· {threads} thread{'s' if threads > 1 else ''}")

    def _model(self, bank: VectorBank | None = None, name: str | None = None) -> LoadedModel:
        model = name if name is not None else self.model_for(bank) if bank is not None else None
        lm = self._models.get(model or "")
        if lm is None:
            raise ModelError(f"the model {model} is not loaded yet")
        return lm

    def check_bank(self, bank: VectorBank) -> None:
        from melbo_tui.bank import check_bank_fits
        from melbo_tui.errors import BankError
        from melbo_tui.models import canonical_name

        fixed = self.fixed
        if fixed is not None and canonical_name(bank.meta.model) != fixed:
            raise BankError(f"made with {bank.meta.model}, not with {fixed} (--model): open it without --model to "
                            "load the model it was made with")
        lm = self._model(bank)
        check_bank_fits(bank, lm.hidden_size, lm.num_layers)

    def stream(self, request: GenerationRequest, on_text: OnText, should_stop: ShouldStop) -> GenerationResult:
        from melbo_tui.generation import generate_stream
        from melbo_tui.prompts import encode

        lm = self._model(request.bank)
        s = request.settings
        vector = compose_target(request.bank, request.target)
        with self._turns.generation():
            if should_stop():
                return GenerationResult("", 0, 0.0, True)
            ids = encode(lm, s.prompt, s.system, s.raw)
            return generate_stream(lm, ids, request.bank.meta.source_layer, vector, s.generation, on_text, should_stop,
                                   key=request.target.key())

    def complete(self, request: BatchRequest, on_completed: OnCompleted, should_stop: ShouldStop) -> None:
        import torch

        from melbo_tui.generation import complete_batch
        from melbo_tui.prompts import encode

        lm, bank, s = self._model(request.bank), request.bank, request.settings
        size = read_ahead_batch(lm.device.type)
        give_way = self._turns.gives_way(should_stop)
        targets = list(request.targets)
        for start in range(0, len(targets), size):
            chunk = targets[start : start + size]
            vectors = torch.stack([_vector_or_zero(bank, t) for t in chunk])  # [B, d_model]
            with self._turns.measurement(give_way):
                if give_way():
                    return
                ids = encode(lm, s.prompt, s.system, s.raw)
                results = complete_batch(lm, ids, bank.meta.source_layer, vectors, s.generation,
                                         keys=[t.key() for t in chunk], should_stop=give_way)
            if any(r.stopped for r in results):
                return  # cut short for a waiting generation: nothing of this batch is kept
            for target, result in zip(chunk, results, strict=True):
                on_completed(target, result)

    def metrics(self, request: MetricsRequest, should_stop: ShouldStop, on_progress: OnProgress) -> MeasuredColumns:
        import torch

        from melbo_tui.errors import Stopped
        from melbo_tui.metrics import CONTINUATION_TOKENS, bank_metrics
        from melbo_tui.prompts import encode

        names = [name for name in request.names if name in MEASURABLE]
        if not names:
            return MeasuredColumns({}, {})
        lm, bank = self._model(request.bank), request.bank
        meta = bank.meta
        ids = encode(lm, request.prompt, request.system, request.raw)
        rows = torch.cat([bank.vectors.float(), torch.zeros(1, bank.hidden_size)])  # the last row: no vector

        def between_chunks(done: int, total: int) -> None:  # no hook is live here: a generation may go first
            on_progress(min(done, total - 1), total - 1)
            self._turns.yield_to_generations(should_stop)

        continuation = CONTINUATION_TOKENS if Metric.KL_SEQ in names else 1  # the continuation costs only kl_seq
        with self._turns.measurement(should_stop):
            try:
                values = bank_metrics(lm, rows, ids, source_layer=meta.source_layer, target_layer=meta.target_layer,
                                      base_index=meta.base_index, continuation=continuation, base_sinks=meta.kind.has_base,
                                      batch_size=self.METRICS_CHUNK,
                                      should_stop=should_stop, on_progress=between_chunks)
            except Stopped:
                return MeasuredColumns({}, {})
        return MeasuredColumns({name: [float(v) for v in values[name][:-1]] for name in names},
                               {name: float(values[name][-1]) for name in names})

    def target_metrics(self, bank: VectorBank, target: Composition, settings: ExploreSettings) -> dict[str, float]:
        import torch

        from melbo_tui.metrics import bank_metrics
        from melbo_tui.prompts import encode

        vector = compose_target(bank, target)
        if vector is None:
            return {}
        lm, meta = self._model(bank), bank.meta
        ids = encode(lm, settings.prompt, settings.system, settings.raw)
        rows = torch.stack([bank.vectors[meta.base_index], vector])  # row 0: the base
        with self._turns.measurement(lambda: False):
            values = bank_metrics(lm, rows, ids, source_layer=meta.source_layer, target_layer=meta.target_layer, continuation=1)
        return {"norm": float(vector.norm()), "kl": float(values["kl"][1]), "kl_unsteered": float(values["kl_unsteered"][1])}

    def _ortho_source(self, job: OrthoJob) -> OrthoSource:
        from melbo_tui.jobs import OrthoSource

        meta = job.bank.meta
        if not meta.prompts:
            raise ModelError("the bank records no prompt to run MELBO-ortho on")
        return OrthoSource(parent=job.bank, parent_path=str(job.bank_path), base_index=job.base_index, prompts=job.prompts,
                           system=meta.system_prompt, raw=meta.raw_prompts)

    @staticmethod
    def _melbo_config(job: MelboJob) -> MelboConfig:
        from melbo_tui.melbo import MelboConfig

        return MelboConfig(job.source_layer, job.target_layer, job.radius, num_vectors=job.count, steps=job.steps,
                           batch_vectors=job.batch_vectors)

    def estimate(self, job: Job) -> float:
        from melbo_tui.jobs import estimate_melbo, estimate_ortho
        from melbo_tui.ortho import OrthoConfig

        lm = self._model(name=job.model)
        with self._turns.measurement(lambda: False):
            if isinstance(job, OrthoJob):
                return estimate_ortho(lm, self._ortho_source(job), OrthoConfig(count=job.count, objective=job.objective))
            return estimate_melbo(lm, self._melbo_config(job), [job.prompt], job.system, job.raw)

    def run_ortho(self, job: OrthoJob, on_progress: OnJobProgress, should_stop: ShouldStop) -> str:
        from melbo_tui.jobs import run_ortho, store_metrics
        from melbo_tui.metrics import evaluate_bank
        from melbo_tui.ortho import OrthoConfig, OrthoProgress
        from melbo_tui.prompts import encode

        lm, source = self._model(name=job.model), self._ortho_source(job)

        def progress(p: OrthoProgress) -> None:
            on_progress(JobProgress(p.vectors_done, p.count, p.step, p.steps, p.loss))
            self._turns.yield_to_generations(should_stop)  # between steps no hook is live

        with self._turns.model:
            result = run_ortho(lm, source, OrthoConfig(count=job.count, objective=job.objective), job.out,
                               created_by=job.command(self.model_flags(job.model)),
                               on_progress=progress, should_stop=should_stop)
            if result.found and not result.stopped:  # as `melbo-tui ortho` does: every row measured, stored in the file
                ids = encode(lm, source.prompts[0], source.system, source.raw)

                def evaluate(bank: VectorBank) -> VectorBank:
                    return evaluate_bank(lm, bank, ids, source.prompts[0], source.system, source.raw,
                                         on_progress=lambda _d, _t: self._turns.yield_to_generations(lambda: False))

                store_metrics(job.out, result.bank, evaluate)
        on_progress(JobProgress(result.found, job.count, 0, 0, 0.0))  # the engine reports before each vector, not after the last
        return result.summary

    def run_melbo(self, job: MelboJob, on_progress: OnJobProgress, should_stop: ShouldStop) -> str:
        from melbo_tui.jobs import run_melbo
        from melbo_tui.melbo import TrainProgress

        lm = self._model(name=job.model)

        def progress(p: TrainProgress) -> None:
            on_progress(JobProgress(p.vectors_done, p.num_vectors, p.step, p.steps, p.loss))
            self._turns.yield_to_generations(should_stop)  # between steps no hook is live

        def checkpoint(saved: int) -> None:
            on_progress(JobProgress(saved, job.count, 0, job.steps, 0.0))

        with self._turns.model:
            run = run_melbo(lm, self._melbo_config(job), [job.prompt], job.out, system=job.system, raw=job.raw,
                            created_by=job.command(self.model_flags(job.model)), on_progress=progress, should_stop=should_stop,
                            on_checkpoint=checkpoint)
        saved = len(run.bank)
        if not run.complete:
            return f"stopped: {saved} MELBO vectors saved in {job.out}" if saved else "stopped before the first batch: nothing saved"
        return f"{saved} MELBO vectors in {job.out}"


class ScriptedBackend:
    """A model stand-in: streams deterministic words with small sleeps, honours `should_stop`.

    The text depends on the target and settings, so a test can tell completions apart; metric
    values depend on the prompt, so a re-measurement on an edited prompt shows. `fail_load` /
    `fail_stream` make it raise like a broken model would. Times are nominal (tokens x
    `token_seconds`), so what the screen shows does not depend on the machine's load.
    """

    def __init__(
        self,
        load_seconds: float = 0.0,
        token_seconds: float = 0.005,
        tokens: int | None = None,
        fail_load: str | None = None,
        fail_stream: str | None = None,
        hidden_size: int | None = None,
        load_gate: threading.Event | None = None,
        batch_seconds: float = 0.0,
        per_bank_models: bool = False,
    ) -> None:
        self.load_seconds = load_seconds
        self.load_gate = load_gate  # when given, `load` waits until it is set (a model that takes its time)
        self.token_seconds = token_seconds
        self.batch_seconds = batch_seconds  # what one read-ahead batch takes
        self.tokens = tokens
        self.fail_load = fail_load
        self.fail_stream = fail_stream
        self.hidden_size = hidden_size
        self.loaded = threading.Event()
        self.started: list[GenerationRequest] = []
        self.finished: list[tuple[GenerationRequest, GenerationResult]] = []
        self.completed: list[Composition] = []  # read-ahead completions, in order
        self.metrics_requests: list[MetricsRequest] = []
        self.estimated: list[str] = []  # `timing_key` of every job timed
        self.metrics_seconds = 0.0
        self.job_block, self.job_steps, self.job_step_seconds = 4, 5, 0.01
        self.melbo_jobs: list[MelboJob] = []
        self.created_by: list[str] = []
        self._turns = ModelTurns()  # one "model call" at a time, as the real backend: read-ahead gives way
        self.per_bank_models = per_bank_models  # each bank served by the model it names, as the real backend without --model
        self.loads: list[str] = []  # the models loaded, in order

    def model_for(self, bank: VectorBank) -> str:
        return bank.meta.model if self.per_bank_models else "scripted"

    def model_flags(self, model: str) -> tuple[str, ...]:
        return ("--model", model) if self.per_bank_models else ()

    def load(self, model: str) -> str:
        time.sleep(self.load_seconds)
        if self.load_gate is not None:
            self.load_gate.wait()
        if self.fail_load:
            raise ModelError(self.fail_load)
        self.loads.append(model)
        self.loaded.set()
        return f"scripted {model} (no weights)" if self.per_bank_models else "scripted model (no weights)"

    def check_bank(self, bank: VectorBank) -> None:
        from melbo_tui.errors import BankError

        if self.hidden_size is not None and bank.hidden_size != self.hidden_size:
            raise BankError(f"bank was made for hidden size {bank.hidden_size}, the model has {self.hidden_size}")

    def words(self, target: Composition, settings: ExploreSettings) -> list[str]:
        n = self.tokens if self.tokens is not None else settings.generation.max_new_tokens
        tag = target.key().replace(":", "_")
        return [f" {tag}-w{i}" for i in range(n)] if target.rows else [f" plain-w{i}" for i in range(n)]

    def stream(self, request: GenerationRequest, on_text: OnText, should_stop: ShouldStop) -> GenerationResult:
        self.started.append(request)
        if self.fail_stream:
            raise MelboError(self.fail_stream)
        pieces: list[str] = []
        stopped = False
        with self._turns.generation():
            for word in self.words(request.target, request.settings):
                if should_stop():
                    stopped = True
                    break
                time.sleep(self.token_seconds)
                pieces.append(word)
                on_text(word)
        result = GenerationResult("".join(pieces), len(pieces), max(len(pieces), 1) * self.token_seconds, stopped)
        self.finished.append((request, result))
        return result

    def complete(self, request: BatchRequest, on_completed: OnCompleted, should_stop: ShouldStop) -> None:
        give_way = self._turns.gives_way(should_stop)
        for start in range(0, len(request.targets), 4):
            chunk = request.targets[start : start + 4]
            with self._turns.measurement(give_way):
                deadline = time.perf_counter() + self.batch_seconds
                while time.perf_counter() < deadline and not give_way():
                    time.sleep(0.002)
                if give_way():
                    return
            for target in chunk:
                words = self.words(target, request.settings)
                self.completed.append(target)
                on_completed(target, GenerationResult("".join(words), len(words), len(words) * self.token_seconds, False))  # as if streamed: the same tok/s either way

    def metrics(self, request: MetricsRequest, should_stop: ShouldStop, on_progress: OnProgress) -> MeasuredColumns:
        self.metrics_requests.append(request)
        bank = request.bank
        n, base = len(bank), bank.meta.base_index
        factor = 1.0 + (len(request.prompt) % 7) / 10  # another prompt, other values
        time.sleep(self.metrics_seconds)
        if should_stop():
            return MeasuredColumns({}, {})
        kl = [0.0 if i == base else factor * (0.01 * i + 0.05 * math.sin(i) ** 2) for i in range(n)]
        columns = {"kl": kl, "kl_rev": [v * 1.1 for v in kl], "kl_unsteered": [factor * (0.03 + 0.02 * i) for i in range(n)]}
        unsteered = {"kl": 0.3 * factor, "kl_rev": 0.33 * factor, "kl_unsteered": 0.0}
        on_progress(n, n)
        wanted = [name for name in columns if name in request.names]
        return MeasuredColumns({name: columns[name] for name in wanted}, {name: unsteered[name] for name in wanted})

    def target_metrics(self, bank: VectorBank, target: Composition, settings: ExploreSettings) -> dict[str, float]:
        vector = compose_target(bank, target)
        return {} if vector is None else {"norm": float(vector.norm()), "kl": 0.123, "kl_unsteered": 0.456}

    def estimate(self, job: Job) -> float:
        self.estimated.append(job.timing_key())
        return self.job_steps * self.job_step_seconds

    def run_ortho(self, job: OrthoJob, on_progress: OnJobProgress, should_stop: ShouldStop) -> str:
        """Appends random orthogonal rows in blocks of `job_block`, saving after each like the real run.

        Like the real run, nothing is written before the first block is done.
        """
        import dataclasses

        import torch

        from melbo_tui.bank import VectorBank, save_bank
        from melbo_tui.kinds import BankKind

        command = job.command(self.model_flags(job.model))
        self.created_by.append(command)
        theta0 = job.bank.vectors[job.base_index]
        meta = dataclasses.replace(job.bank.meta, kind=BankKind.ORTHO, base_index=0, created_by=command)
        rows = theta0[None].clone()
        gen = torch.Generator().manual_seed(job.base_index)
        while len(rows) - 1 < job.count:
            for step in range(1, self.job_steps + 1):
                if should_stop():
                    found = len(rows) - 1
                    return f"stopped: {found} vectors saved in {job.out}" if found else "stopped before the first vector: nothing saved"
                time.sleep(self.job_step_seconds)
                on_progress(JobProgress(len(rows) - 1, job.count, step, self.job_steps, 1.0 / step))
            k = min(self.job_block, job.count - (len(rows) - 1))
            block = torch.randn(k, rows.shape[1], generator=gen)
            basis, _ = torch.linalg.qr(torch.cat([rows, block]).T)  # [d, n+k] orthonormal columns
            new = basis.T[len(rows):] * float(theta0.norm())
            rows = torch.cat([rows, new])
            save_bank(VectorBank(vectors=rows, meta=meta), job.out)
        on_progress(JobProgress(len(rows) - 1, job.count, self.job_steps, self.job_steps, 0.0))
        return f"{len(rows) - 1} orthogonal vectors in {job.out}"

    def run_melbo(self, job: MelboJob, on_progress: OnJobProgress, should_stop: ShouldStop) -> str:
        """Random orthogonal rows of norm `radius` in batches of `job.batch_vectors`, saved after each batch.

        Like the real run, nothing is written before the first batch is done.
        """
        import torch

        from melbo_tui.bank import BankMeta, VectorBank, save_bank
        from melbo_tui.kinds import BankKind

        self.melbo_jobs.append(job)
        command = job.command(self.model_flags(job.model))
        self.created_by.append(command)
        hidden = self.hidden_size or 576
        meta = BankMeta(kind=BankKind.MELBO, model="scripted", hidden_size=hidden, num_layers=30,
                        source_layer=job.source_layer, target_layer=job.target_layer, prompts=[job.prompt],
                        system_prompt=job.system, radius=job.radius, base_index=0, created_by=command,
                        raw_prompts=job.raw)
        rows = torch.zeros(0, hidden)
        gen = torch.Generator().manual_seed(len(job.prompt))
        while len(rows) < job.count:
            for step in range(1, self.job_steps + 1):
                if should_stop():
                    return f"stopped: {len(rows)} MELBO vectors saved in {job.out}" if len(rows) else "stopped before the first batch: nothing saved"
                time.sleep(self.job_step_seconds)
                on_progress(JobProgress(len(rows), job.count, step, self.job_steps, -1.0 * step))
            k = min(job.batch_vectors, job.count - len(rows))
            block = torch.randn(k, hidden, generator=gen)
            basis, _ = torch.linalg.qr(torch.cat([rows, block]).T)  # [d, n+k] orthonormal columns
            rows = torch.cat([rows, basis.T[len(rows):] * job.radius])
            save_bank(VectorBank(vectors=rows, meta=meta), job.out)
            on_progress(JobProgress(len(rows), job.count, 0, job.steps, 0.0))
        return f"{len(rows)} MELBO vectors in {job.out}"
