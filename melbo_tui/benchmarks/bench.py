"""The benchmark: side-by-side ratios of our fast paths against their plain baselines, one run.

Every pair is measured in the same process on the same model, one after the other, so the
ratios hold even on a busy machine (the absolute numbers do not). Rows:
- ortho fast vs sequential, one row per objective (tokens, seed): seconds per vector, each
  with its default settings, and the quality of the first n vectors of each measured by
  behaviour over a continuation (median kl_seq against the unsteered model's, median err), not
  by the loss;
- eval batched (`metrics.bank_metrics`) vs a one-vector-at-a-time loop (full forward);
- dump batched (`generation.generate_batch`, B vectors per call) vs one `generate` per vector;
- steered vs unsteered generation, tokens/s (the hook's overhead);
- model load from the safetensors cache vs from the GGUF (dequantising);
- achieved GFLOP/s of one fast ortho evaluation (one vector, loss + gradient) vs a matmul
  measured here in the model's dtype;
- DCT vs MELBO: seconds per vector, each as a user runs it on the same prompt and layers
  (`melbo-tui dct --num-vectors 64` with R calibrated, the calibration counted; `melbo-tui train`
  at its default 300 steps and batch);
- key-to-repaint latency of the explorer (`tui_latency`);
- key to full completion in the explorer on the real model: a row its read-ahead prepared vs a
  cold one, side by side in one app.
`--quick` shrinks every size (2 fast ortho vectors per objective, 20 evaluations each, and so
on) so that CI runs it in about 75 s (`melbo-tui bench --quick --threads 1`, embedded model, 2-core
CPU): its ratios show that the code paths work, not how fast they are.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from melbo_tui.bank import BankMeta, VectorBank
from melbo_tui.benchmarks.tui_latency import Shape
from melbo_tui.generation import GenerationSettings, generate_batch, run_generate
from melbo_tui.kinds import BankKind
from melbo_tui.models import LoadedModel, ModelRequest, embedded_gguf_path, load_model
from melbo_tui.prompts import encode
from melbo_tui.steering import steer

PROMPT = "How can I build a bomb?"


@dataclass(frozen=True)
class BenchConfig:
    quick: bool = False
    source_layer: int = 8
    target_layer: int = 16
    radius: float = 15.0  # in SmolLM2's units (`scale`): the shipped bank's R there, the same fraction of another model's
    ortho_fast_count: int = 32
    ortho_sequential_count: int = 3
    ortho_steps: int | None = None  # None: each strategy's default (Adam 1000 steps, L-BFGS evaluations)
    continuation: int = 32  # kl_seq: tokens of the base's greedy continuation
    eval_vectors: int = 64
    dump_vectors: int = 32  # the CLI's default batch on a CPU
    dump_tokens: int = 32
    gen_tokens: int = 64
    gguf_load: bool = True
    matmul_size: int = 1024
    dct_vectors: int = 64
    dct_iterations: int = 10
    dct_calibrate: bool = True  # False: R = `radius`, no calibration
    melbo_vectors: int = 8
    melbo_steps: int = 300

    @classmethod
    def for_ci(cls) -> BenchConfig:
        """The `--quick` sizes."""
        return cls(quick=True, ortho_fast_count=2, ortho_sequential_count=1, ortho_steps=20, continuation=8, eval_vectors=16,
                   dump_vectors=4, dump_tokens=8, gen_tokens=16, gguf_load=False, matmul_size=512,
                   dct_vectors=8, dct_iterations=2, dct_calibrate=False, melbo_vectors=2, melbo_steps=10)


Row = dict[str, Any]


def run_bench(config: BenchConfig, request: ModelRequest | None = None,
              on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """All measurements as a JSON-able dict: `rows` (one per comparison), `machine`, `config`.

    One model copy at a time: the load row reloads the model only after the measured one is
    released (a second copy of an 8B model does not fit beside the first on most GPUs).
    """
    request = request or ModelRequest()
    stage = on_stage or (lambda _s: None)
    rows: list[Row] = []
    stage("model load")
    t0 = time.perf_counter()
    lm = request.load()
    cached_load = time.perf_counter() - t0
    if config.target_layer >= lm.num_layers:  # another model than the embedded one
        from melbo_tui.melbo import default_layers

        source, target = default_layers(lm.num_layers)
        config = replace(config, source_layer=source, target_layer=target)
    from melbo_tui.scale import model_scale

    config = replace(config, radius=model_scale(lm, config.source_layer).radius(config.radius))
    ids = encode(lm, PROMPT)
    theta0 = _random_vectors(lm, 1, config.radius, seed=0)[0]
    stage("ortho fast vs sequential")
    rows.extend(_ortho_rows(lm, theta0, ids, config))
    stage("eval batched vs loop")
    rows.append(_eval_row(lm, config, ids))
    stage("dump batched vs loop")
    rows.append(_dump_row(lm, config, ids))
    stage("steered vs unsteered generation")
    rows.append(_steering_row(lm, config, ids))
    stage("FLOP/s")
    rows.append(_flops_row(lm, config, ids))
    stage("DCT vs MELBO")
    rows.append(_dct_row(lm, config))
    machine, name, device = _machine(lm), lm.name, lm.device
    shape = Shape(lm.hidden_size, lm.num_layers, config.source_layer, config.target_layer)
    del lm
    _release(device)
    stage("model load")
    rows.append(_load_row(request, cached_load, config))
    rows.append(_tui_latency(config))
    stage("explorer: prepared vs cold row")
    rows.append(_read_ahead_row(request, config, shape))
    return {"rows": rows, "machine": machine, "config": asdict(config), "model": name}


def _median(values: torch.Tensor) -> float:
    return float(values.median()) if values.numel() else float("nan")


def _release(device: torch.device) -> None:
    """Give the memory of a dropped model back before the next load."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def render_table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    machine = report["machine"]
    title = (f"melbo-tui bench{' --quick' if report['config']['quick'] else ''}: {report['model']} on "
             f"{machine['device']} ({machine['cpu']}, {machine['threads']} threads, {machine['dtype']})")
    table = Table(title=title)
    for column in ("comparison", "ours", "baseline", "ratio", "target", "notes"):
        table.add_column(column, justify="right" if column in ("ours", "baseline", "ratio") else "left")
    for row in report["rows"]:
        table.add_row(row["name"], row["ours"], row["baseline"], f"{row['ratio']:.2f}x" if row.get("ratio") else "-",
                      row.get("target", ""), row.get("notes", ""))
    return table


# --- rows -----------------------------------------------------------------------------------------


def _ortho_rows(lm: LoadedModel, theta0: torch.Tensor, ids: torch.Tensor, config: BenchConfig) -> list[Row]:
    """Per objective (the default and the seed's; `continuation` is `tokens` on a longer input, the same
    optimiser): fast vs sequential from the same base; quality of the first n by behaviour, not by the loss."""
    from melbo_tui.kinds import Objective, Strategy
    from melbo_tui.metrics import measure
    from melbo_tui.ortho import OrthoConfig, search

    n = config.ortho_sequential_count
    rows = []
    for objective in (Objective.TOKENS, Objective.SEED):
        results = {}
        for strategy, count in ((Strategy.FAST, config.ortho_fast_count), (Strategy.SEQUENTIAL, n)):
            cfg = OrthoConfig(count=count, strategy=strategy, objective=objective, steps=config.ortho_steps)
            found = search(lm, theta0, [ids], source_layer=config.source_layer, target_layer=config.target_layer, config=cfg)
            rows_to_measure = torch.cat([theta0[None].cpu(), found.vectors[:n], torch.zeros(1, lm.hidden_size)])
            values = measure(lm, rows_to_measure, ids, source_layer=config.source_layer, target_layer=config.target_layer,
                             continuation=config.continuation).values
            results[strategy] = {  # NaN where the search found nothing (its first vector collapsed)
                "seconds_per_vector": found.seconds / max(len(found.vectors), 1), "vectors": len(found.vectors),
                "median_kl_seq": _median(values["kl_seq"][1:-1]), "unsteered_kl_seq": float(values["kl_seq"][-1]),
                "median_err": _median(values["err"][1:-1]), "median_kl": _median(values["kl"][1:-1]),
                "median_loss": _median(torch.tensor(found.losses[:n])), "mean_steps": statistics.mean(found.steps or [0]),
                "median_norm": _median(found.vectors[:n].norm(dim=1)),
            }
        fast, seq = results[Strategy.FAST], results[Strategy.SEQUENTIAL]
        rows.append({
            "name": f"ortho fast vs sequential, --objective {objective} (s/vector)",
            "ours": f"{fast['seconds_per_vector']:.2f} s", "baseline": f"{seq['seconds_per_vector']:.2f} s",
            "ratio": seq["seconds_per_vector"] / fast["seconds_per_vector"], "target": ">= 20x at <= kl_seq",
            "notes": (f"first {n}: kl_seq {fast['median_kl_seq']:.3g} vs {seq['median_kl_seq']:.3g} (unsteered "
                      f"{fast['unsteered_kl_seq']:.3g}), err {fast['median_err']:.2f} vs {seq['median_err']:.2f}; "
                      f"L-BFGS {fast['mean_steps']:.0f} evaluations vs Adam {seq['mean_steps']:.0f} steps"),
            "detail": {"fast": fast, "sequential": seq},
        })
    return rows


def _eval_row(lm: LoadedModel, config: BenchConfig, ids: torch.Tensor) -> Row:
    vectors = _random_vectors(lm, config.eval_vectors, config.radius, seed=1)
    bank = _bank(lm, vectors, config)
    _next_token(lm, _bank(lm, vectors[:2], config), ids)  # warm-up
    t0 = time.perf_counter()
    ours = _next_token(lm, bank, ids)["kl"]
    fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    baseline = kl_loop(lm, vectors, config.source_layer, ids)
    slow = time.perf_counter() - t0
    agree = float((ours - baseline).abs().max())
    return {"name": f"eval batched vs loop ({len(vectors)} vectors)", "ours": f"{fast:.2f} s", "baseline": f"{slow:.2f} s",
            "ratio": slow / fast, "target": ">= 10x", "notes": f"max |dKL| {agree:.1e}",
            "detail": {"seconds": fast, "loop_seconds": slow, "max_abs_kl_difference": agree}}


def kl_loop(lm: LoadedModel, vectors: torch.Tensor, source_layer: int, ids: torch.Tensor) -> torch.Tensor:
    """The plain baseline: one full forward per vector, KL(P_i || P_0) against row 0."""
    logps = []
    with torch.no_grad():
        for vector in vectors:
            with steer(lm, source_layer, vector.to(lm.device)):
                logits = lm.model(input_ids=ids, use_cache=False).logits[0, -1]
            logps.append(torch.log_softmax(logits.float(), dim=-1).cpu())
    logp = torch.stack(logps)
    return (logp.exp() * (logp - logp[0])).sum(dim=-1)


def _dump_row(lm: LoadedModel, config: BenchConfig, ids: torch.Tensor) -> Row:
    vectors = _random_vectors(lm, config.dump_vectors, config.radius, seed=2).to(lm.device)
    settings = GenerationSettings(max_new_tokens=config.dump_tokens, temperature=0.0)
    generate_batch(lm, ids, config.source_layer, vectors[:1], GenerationSettings(max_new_tokens=2))  # warm-up
    t0 = time.perf_counter()
    batched = generate_batch(lm, ids, config.source_layer, vectors, settings)
    fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    looped = [generate_batch(lm, ids, config.source_layer, v[None], settings)[0] for v in vectors]
    slow = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(batched, looped, strict=True))
    return {"name": f"dump batched vs loop ({len(vectors)} x {config.dump_tokens} tokens)", "ours": f"{fast:.2f} s",
            "baseline": f"{slow:.2f} s", "ratio": slow / fast, "target": ">= 8x",
            "notes": f"{same}/{len(vectors)} greedy texts identical",
            "detail": {"seconds": fast, "loop_seconds": slow, "identical_texts": same}}


def _steering_row(lm: LoadedModel, config: BenchConfig, ids: torch.Tensor) -> Row:
    vector = _random_vectors(lm, 1, config.radius, seed=3)[0].to(lm.device)
    n = config.gen_tokens

    def tokens_per_second(v: torch.Tensor | None) -> float:
        with torch.no_grad(), steer(lm, config.source_layer, v):
            t0 = time.perf_counter()
            run_generate(lm, ids, GenerationSettings(max_new_tokens=n), ["0"], min_new_tokens=n)
            return n / (time.perf_counter() - t0)

    tokens_per_second(None)  # warm-up
    steered, plain = [], []
    for _ in range(3):  # interleaved, so that a busy moment hits both
        plain.append(tokens_per_second(None))
        steered.append(tokens_per_second(vector))
    s, p = statistics.median(steered), statistics.median(plain)
    overhead = (p - s) / p * 100
    return {"name": f"steered vs unsteered generation ({n} tokens)", "ours": f"{s:.1f} tok/s", "baseline": f"{p:.1f} tok/s",
            "ratio": s / p, "target": "overhead <= 5%", "notes": f"overhead {overhead:+.1f}%",
            "detail": {"steered_tokens_per_second": s, "unsteered_tokens_per_second": p, "overhead_percent": overhead}}


def _load_row(request: ModelRequest, cached: float, config: BenchConfig) -> Row:
    """Load times, one model at a time: each copy is dropped before the next load."""
    t0 = time.perf_counter()
    request.load()
    warm = time.perf_counter() - t0
    _release(torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    if not config.gguf_load or request.name not in (None, "embedded"):
        return {"name": "model load: cache (first, again)", "ours": f"{cached:.2f} s", "baseline": f"{warm:.2f} s",
                "ratio": None, "notes": "GGUF load skipped" + (" (--quick)" if config.quick else ""),
                "detail": {"cache_seconds": cached, "cache_again_seconds": warm}}
    t0 = time.perf_counter()
    load_model(str(embedded_gguf_path()), device=request.device, dtype=request.dtype)
    gguf = time.perf_counter() - t0
    return {"name": "model load: safetensors cache vs GGUF", "ours": f"{warm:.2f} s", "baseline": f"{gguf:.2f} s",
            "ratio": gguf / warm, "notes": f"first load in this run {cached:.2f} s",
            "detail": {"cache_seconds": warm, "gguf_seconds": gguf, "first_load_seconds": cached}}


def _flops_row(lm: LoadedModel, config: BenchConfig, ids: torch.Tensor) -> Row:
    from melbo_tui.kinds import Objective
    from melbo_tui.ortho import OrthoLoss, _CachedForward
    from melbo_tui.sink import SinkRule

    peak = matmul_gflops(config.matmul_size, lm.dtype, lm.device)
    theta0 = _random_vectors(lm, 1, config.radius, seed=4).to(lm.device)
    objective = OrthoLoss(_CachedForward(lm, config.source_layer, config.target_layer, [ids]), Objective.TOKENS, SinkRule(), theta0[0])
    k = 1  # what the fast strategy runs per loss evaluation
    thetas = torch.nn.Parameter(_random_vectors(lm, k, config.radius, seed=5).to(lm.device))
    objective.value(thetas).sum().backward()  # warm-up
    reps = 2 if config.quick else 5
    t0 = time.perf_counter()
    for _ in range(reps):
        thetas.grad = None
        objective.value(thetas).sum().backward()
    _sync(lm.device)
    seconds = (time.perf_counter() - t0) / reps
    blocks = lm.blocks[config.source_layer + 1: config.target_layer + 1]
    params = sum(p.numel() for b in blocks for p in b.parameters() if p.ndim >= 2)
    tokens = k * ids.shape[1]
    # weights are frozen: the backward computes input gradients only, about one more forward
    flops = 2 * 2 * params * tokens
    achieved = flops / seconds / 1e9
    return {"name": f"ortho evaluation GFLOP/s vs matmul peak ({lm.dtype})".replace("torch.", ""),
            "ours": f"{achieved:.1f}", "baseline": f"{peak:.1f}", "ratio": achieved / peak,
            "notes": f"loss + gradient of {k} vector over {ids.shape[1]} tokens: {seconds * 1000:.0f} ms",
            "detail": {"step_seconds": seconds, "vectors": k, "gflops": achieved, "matmul_gflops": peak,
                       "flops_per_step": flops}}


def matmul_gflops(size: int, dtype: torch.dtype, device: torch.device) -> float:
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.5 or reps < 3:
        a @ b
        reps += 1
    _sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - t0) / 1e9


def _dct_row(lm: LoadedModel, config: BenchConfig) -> Row:
    """Seconds per vector of DCT (calibration included) and of MELBO, same prompt and layers, one after the other."""
    from melbo_tui.dct import DCTConfig, DCTRun, run_dct
    from melbo_tui.melbo import MelboConfig, train

    melbo = MelboConfig(config.source_layer, config.target_layer, config.radius, num_vectors=config.melbo_vectors,
                        steps=config.melbo_steps)
    t0 = time.perf_counter()
    train(lm, melbo, [encode(lm, PROMPT)])
    melbo_per_vector = (time.perf_counter() - t0) / config.melbo_vectors
    radius = None if config.dct_calibrate else config.radius
    dct = DCTConfig(num_vectors=config.dct_vectors, iterations=config.dct_iterations, radius=radius)
    t0 = time.perf_counter()
    bank = run_dct(lm, DCTRun(config.source_layer, config.target_layer, [PROMPT], dct))
    dct_seconds = time.perf_counter() - t0
    assert bank is not None
    dct_per_vector = dct_seconds / config.dct_vectors
    fit = float(bank.meta.extra["seconds"])
    return {"name": f"DCT ({config.dct_vectors} vectors, {config.dct_iterations} iterations) vs MELBO "
                    f"({config.melbo_vectors} x {config.melbo_steps} steps), s/vector",
            "ours": f"{dct_per_vector:.2f} s", "baseline": f"{melbo_per_vector:.2f} s", "ratio": melbo_per_vector / dct_per_vector,
            "target": ">= 10x",
            "notes": (f"DCT R={bank.meta.radius:.3g} ({'calibrated' if radius is None else 'given'}), fit {fit:.1f} s of "
                      f"{dct_seconds:.1f} s; MELBO R={config.radius:g}; 1 prompt, blocks {config.source_layer}->{config.target_layer}"),
            "detail": {"dct_seconds": dct_seconds, "dct_fit_seconds": fit, "dct_vectors": config.dct_vectors,
                       "dct_radius": bank.meta.radius, "melbo_seconds_per_vector": melbo_per_vector,
                       "melbo_vectors": config.melbo_vectors, "melbo_steps": config.melbo_steps}}


def _tui_latency(config: BenchConfig) -> Row:
    from melbo_tui.benchmarks.tui_latency import measure_latency

    numbers = measure_latency(quick=config.quick)
    median = numbers["median_ms"]
    return {"name": "TUI key-to-repaint latency", "ours": f"{median:.1f} ms",
            "baseline": "-", "ratio": None, "notes": ", ".join(f"{k} {v:g}" for k, v in numbers.items()),
            "detail": numbers}


def _read_ahead_row(request: ModelRequest, config: BenchConfig, shape: Shape) -> Row:
    from melbo_tui.benchmarks.tui_latency import measure_read_ahead

    numbers = measure_read_ahead(request, quick=config.quick, shape=shape, radius=config.radius)
    prepared, cold = numbers["prepared_s"], numbers["cold_s"]
    tokens = 8 if config.quick else 48
    return {"name": f"explorer: key to full completion ({tokens} tokens), prepared row vs cold row",
            "ours": f"{prepared * 1000:.0f} ms", "baseline": f"{cold:.2f} s", "ratio": cold / max(prepared, 1e-6),
            "target": "prepared: at once",
            "notes": (f"median of {numbers['samples']:g}; j onto a row read ahead (batches of 4 on a CPU) vs page down onto one "
                      "nothing prepared (debounce 0.25 s + streaming)"),
            "detail": numbers}


# --- helpers ----------------------------------------------------------------------------------------


def _next_token(lm: LoadedModel, bank: VectorBank, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Next-token metrics only (a one-token continuation): what the loop baseline computes."""
    from melbo_tui.metrics import bank_metrics

    meta = bank.meta
    return bank_metrics(lm, bank.vectors, ids, source_layer=meta.source_layer, target_layer=meta.target_layer,
                        base_index=meta.base_index, continuation=1)


def _random_vectors(lm: LoadedModel, n: int, radius: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(n, lm.hidden_size, generator=generator)
    return vectors / vectors.norm(dim=1, keepdim=True) * radius


def _bank(lm: LoadedModel, vectors: torch.Tensor, config: BenchConfig) -> VectorBank:
    meta = BankMeta(kind=BankKind.MELBO, model=lm.name, hidden_size=lm.hidden_size, num_layers=lm.num_layers,
                    source_layer=config.source_layer, target_layer=config.target_layer, prompts=[PROMPT],
                    radius=config.radius)
    return VectorBank(vectors=vectors.float().cpu(), meta=meta)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _machine(lm: LoadedModel) -> dict[str, Any]:
    device = lm.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"device": str(device), "cpu": name, "threads": torch.get_num_threads(), "dtype": str(lm.dtype).replace("torch.", ""),
            "torch": torch.__version__, "python": platform.python_version()}
