"""Benchmark: what Prompt-to-Prompt editing and inversion cost over plain sampling of the same rows.

One process, one random-weight full-size UNet (timing and memory do not depend on weight values), every
variant sampled through ComfyUI's own ``common_ksampler`` / ``KSamplerAdvanced`` exactly as a graph would,
inside ``torch.inference_mode`` as ComfyUI's executor runs nodes. Node calls (prompt encoding, building the
plan) happen once, outside the timed runs, as ComfyUI caches node outputs between queue runs.

Sampling variants all sample 2 rows (source + 1 edit) from one shared noise with CFG, so plain sampling
of those same rows is the baseline; inversion variants time the NullTextInvert call alone against one
plain sampling pass of 1 row at the same steps. Naive baselines route every attention call through
ComfyUI's explicit-softmax ``attention_basic`` (what the official Prompt-to-Prompt code does), so the table
shows what the fused attention path saves.

Runs are interleaved round-robin over the variants of a group (after one short warm-up run each), so slow
drift of the machine affects every variant alike rather than biasing a ratio. Groups: the sampling
variants, then plain 1 row with the fast inversion modes, then null-text inversion alone (see main()).

    COMFYUI_PATH=/path/to/ComfyUI OMP_NUM_THREADS=2 python bench/run.py               # CPU: SD1.5 256², 10 steps
    COMFYUI_PATH=/path/to/ComfyUI python bench/run.py --model sd15 --size 512         # GPU: 50 steps
    COMFYUI_PATH=/path/to/ComfyUI python bench/run.py --model sdxl --size 1024
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import measure  # noqa: E402
import models  # noqa: E402

SOURCE = "a photo of a cat riding a bicycle"
TARGET = "a photo of a dog riding a bicycle"
REFINED = "a photo of a cat riding a red bicycle"
CROSS, SELF = 0.8, 0.4  # the nodes' defaults (and the paper's word-swap settings)
SAMPLER, SCHEDULER = "ddim", "ddim_uniform"

#: The reduced-depth models' shapes, for the results header.
MODEL_SHAPES = {
    "flux": f"(full width, {models.FLUX_BLOCKS[0]} double + {models.FLUX_BLOCKS[1]} single blocks of 19 + 38)",
    "sd3": f"SD3.5 medium (full width, {models.SD3_BLOCKS} of its 24 joint blocks)"}
#: Targets from the issues: (time ratio, memory ratio) of an edited batch over plain sampling of its rows.
EDIT_TARGETS = {"sd15": (1.10, 1.05), "sdxl": (1.10, 1.05), "flux": (1.15, 1.05), "sd3": (1.15, 1.05)}
#: Fast inversion modes against one plain sampling pass of 1 row.
FAST_INVERSION_TARGET = 2.2
#: Null-text inversion, 50 steps, one 512² image, on an H100 (seconds).
NULL_TEXT_TARGET_S = 15.0

SAMPLING = ("plain", "replace", "refine", "reweight", "replace + local blend", "replace + attention store",
            "naive plain", "plain euler_ancestral", "replace euler_ancestral")
EDITS = ("replace", "refine", "reweight", "replace + local blend", "replace + attention store",
         "replace euler_ancestral")
ANCESTRAL = "euler_ancestral"
INVERSION = ("plain 1 row", "null-text", "negative-prompt", "direct")

DESCRIPTIONS = {
    "plain": "the 2 rows (source, target prompt) sampled with the unpatched model: the baseline",
    "replace": "ReplaceEdit: word swap cat -> dog, cross 0.8, self 0.4, self-attention in the official layers",
    "refine": "RefineEdit: 'a red bicycle' added, same windows",
    "reweight": "Reweight 'cat' x2, apply_to 'new row' (rows: source + reweighted source)",
    "replace + local blend": "replace, then LocalBlendMask (cat / dog, threshold 0.3, start 0.2, level 1/4; Flux 1/2)",
    "replace + attention store": "replace, then AttentionStore recording every row at level 1/4 (Flux 1/2), all steps",
    "naive plain": "plain, with every attention call replaced by explicit softmax (attention_basic)",
    "plain euler_ancestral": "plain, sampled with euler_ancestral (every row draws its own step noise)",
    "replace euler_ancestral": ("replace, sampled with euler_ancestral (every row shares the source's step noise); "
                                "its ratio is to plain euler_ancestral"),
    "plain 1 row": "one row (the source prompt) sampled with CFG: the inversion baseline",
    "null-text": "NullTextInvert null-text: DDIM inversion + per-step unconditional-embedding optimisation",
    "negative-prompt": "NullTextInvert negative-prompt: DDIM inversion only (prompt used as the negative)",
    "direct": "NullTextInvert direct: DDIM inversion only (source row steered onto the pivots)",
}


# --- variants ----------------------------------------------------------------------------------------------


@dataclass
class Variant:
    """One thing to time: ``run(steps)`` does the whole timed work and returns the output latent."""

    name: str
    group: str  # "sampling" or "inversion"
    baseline: str
    run: Callable[[int], torch.Tensor]
    check: Callable[[], str] = lambda: ""
    """After a run: raises if the variant did not do what it claims, else returns a short note."""
    unet_calls: list[int] = field(default_factory=list)
    result: measure.Measurement = field(default_factory=measure.Measurement)
    tensor_peak: int | None = None
    """CPU only: exact peak of live tensor bytes during the warm-up run (torch.profiler allocation events)."""


class NaiveAttention:
    """An ``optimized_attention_override``: every attention call goes to ComfyUI's explicit-softmax kernel.

    ComfyUI's ``wrap_attn`` calls ``override(func, *args, **kwargs)`` with ``_inside_attn_wrapper`` already in
    kwargs, so calling the (wrapped) ``attention_basic`` with them runs it directly, without recursing. The
    call count proves the override is really used; ModelPatcher.clone deep-copies model_options, so the
    object shares itself instead of being copied.
    """

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, func: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        import comfy.ldm.modules.attention as attention

        self.calls += 1
        return attention.attention_basic(*args, **kwargs)

    def __deepcopy__(self, memo: dict) -> NaiveAttention:
        return self


class UNetCalls:
    """Counts UNet forward calls (a forward pre-hook on the diffusion model shared by every clone)."""

    def __init__(self, diffusion_model: torch.nn.Module) -> None:
        self.calls = 0
        diffusion_model.register_forward_pre_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: Any) -> None:
        self.calls += 1


def attention_layers(model: Any) -> int:
    """Attention calls per UNet forward: attn1 and attn2 of every transformer block."""
    from comfy.ldm.modules.attention import BasicTransformerBlock

    unet = model.get_model_object("diffusion_model")
    return 2 * sum(isinstance(m, BasicTransformerBlock) for m in unet.modules())


def build_variants(p2p: dict[str, type], bundle: models.Bundle, size: int, cfg: float, seed: int,
                   only: set[str]) -> list[Variant]:
    """Every variant's node outputs, built once (as a graph's cached node outputs are)."""
    import nodes

    model, clip = bundle.model, bundle.clip
    negative = nodes.CLIPTextEncode().encode(clip, "")[0]
    joint = bundle.family in ("flux", "sd3")  # maps at their 2x2 patches
    level = "1/2" if joint else "1/4"

    def sampler(patched: Any, positive: list, latent: dict, name: str = SAMPLER) -> Callable[[int], torch.Tensor]:
        def run(steps: int) -> torch.Tensor:
            return nodes.common_ksampler(patched, seed, steps, cfg, name, SCHEDULER, positive, negative,
                                         latent)[0]["samples"]
        return run

    def edit(node: str, base: Any, *args: Any) -> tuple:
        return p2p[node]().apply(base, clip, *args, CROSS, SELF, size, size)

    variants: list[Variant] = []

    def add(name: str, group: str, run: Callable[[int], torch.Tensor], check: Callable[[], str] = lambda: "",
            baseline: str = "") -> None:
        if not only or name in only:
            baseline = baseline or ("plain" if group == "sampling" else "plain 1 row")
            variants.append(Variant(name, group, baseline, run, check))

    replace = edit("ReplaceEdit", model, SOURCE, TARGET)
    _, rows, rows_latent = replace
    add("plain", "sampling", sampler(model, rows, rows_latent))
    add("replace", "sampling", sampler(*replace))
    add("refine", "sampling", sampler(*edit("RefineEdit", model, SOURCE, REFINED)))
    reweight = p2p["Reweight"]().apply(model, clip, SOURCE, "cat", 2.0, "new row", CROSS, SELF, size, size)
    add("reweight", "sampling", sampler(*reweight))

    blended, blend_record = p2p["LocalBlendMask"]().apply(replace[0], clip, "cat", "dog", 0.3, 0.2, level)

    def blend_check() -> str:
        masks = blend_record.recorder.last_masks
        if masks is None:
            raise AssertionError("local blend made no mask")
        return f"mask covers {float(masks.float().mean()):.0%} of the latent"
    add("replace + local blend", "sampling", sampler(blended, rows, rows_latent), blend_check)

    stored, stored_rows, stored_latent, store_record = p2p["AttentionStore"]().apply(
        replace[0], clip, "", level, 0.0, 1.0, size, size)

    def store_check() -> str:
        recorded = store_record.maps().rows()
        return f"rows recorded: {recorded}"
    add("replace + attention store", "sampling", sampler(stored, stored_rows, stored_latent), store_check)
    if joint:  # explicit-softmax and inversion variants are the UNet's (flow inversion: issue 37)
        return variants

    naive = NaiveAttention()
    naive_model = model.clone()
    naive_model.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = naive
    per_forward = attention_layers(model)

    def naive_check(run: Callable[[int], torch.Tensor]) -> Callable[[int], torch.Tensor]:
        def counted(steps: int) -> torch.Tensor:
            naive.calls = 0
            out = run(steps)
            if naive.calls < per_forward * steps or naive.calls % per_forward:
                raise AssertionError(f"explicit-softmax override ran {naive.calls} times, expected a multiple of "
                                     f"{per_forward} (attention calls per UNet forward), at least one per step")
            return out
        return counted
    add("naive plain", "sampling", naive_check(sampler(naive_model, rows, rows_latent)),
        lambda: f"{naive.calls} attention calls through attention_basic")
    add(f"plain {ANCESTRAL}", "sampling", sampler(model, rows, rows_latent, ANCESTRAL))
    add(f"replace {ANCESTRAL}", "sampling", sampler(*replace, ANCESTRAL), baseline=f"plain {ANCESTRAL}")

    latent_side = size // 8
    one_row = {"samples": torch.zeros([1, 4, latent_side, latent_side])}
    add("plain 1 row", "inversion", sampler(model, nodes.CLIPTextEncode().encode(clip, SOURCE)[0], one_row))
    image = {"samples": torch.randn([1, 4, latent_side, latent_side], generator=torch.Generator().manual_seed(seed))}
    for mode in ("null-text", "negative-prompt", "direct"):
        def invert(steps: int, mode: str = mode) -> torch.Tensor:
            return p2p["NullTextInvert"]().invert(model, clip, SOURCE, image, mode, steps, cfg, SCHEDULER)[1]["samples"]
        add(mode, "inversion", invert)
    return variants


# --- running -----------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_group(variants: list[Variant], steps: int, warmup_steps: int, repeats: dict[str, int], cuda: bool,
              counter: UNetCalls) -> None:
    """Warm each variant up once, then time them round-robin until each has its number of runs."""
    for variant in variants:
        log(f"warm-up  {variant.name} ({warmup_steps} step(s))")
        with torch.inference_mode():
            if cuda:  # max_memory_allocated is already exact there
                out = variant.run(warmup_steps)
            else:
                out, variant.tensor_peak = measure.tensor_peak(lambda: variant.run(warmup_steps))
        if not torch.isfinite(out).all():
            raise AssertionError(f"{variant.name}: non-finite output; the random weights are too large")
    for repeat in range(max(repeats[v.name] for v in variants)):
        for variant in variants:
            if repeat >= repeats[variant.name]:
                continue
            counter.calls = 0
            with torch.inference_mode():
                out = measure.measure_once(lambda: variant.run(steps), cuda, variant.result)
            variant.unet_calls.append(counter.calls)
            if not torch.isfinite(out).all():
                raise AssertionError(f"{variant.name}: non-finite output")
            note = variant.check()
            log(f"run {repeat + 1}/{repeats[variant.name]} {variant.name}: {variant.result.times[-1]:.2f} s "
                f"(CPU {variant.result.cpu_s[-1]:.1f} s), "
                f"+{variant.result.peaks[-1] / measure.MIB:.0f} MiB, {counter.calls} UNet calls, other processes "
                f"{variant.result.others_cpu[-1]:.0%} of the CPU"
                + (f"; {note}" if note else ""))


# --- report ------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def comfyui_version() -> str:
    path = Path(os.environ.get("COMFYUI_PATH", "")) / "comfyui_version.py"
    try:
        scope: dict[str, Any] = {}
        exec(path.read_text(), scope)
        return str(scope["__version__"])
    except (OSError, KeyError, SyntaxError):
        return "unknown"


def machine_lines(args: argparse.Namespace, bundle: models.Bundle, cuda: bool) -> list[str]:
    import comfy.ldm.modules.attention as attention

    if cuda:
        device = f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
    else:
        device = "CPU only"
    return [
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores, "
        f"{measure.psutil.virtual_memory().total / 2**30:.0f} GiB RAM; {device}",
        f"- torch {torch.__version__}, ComfyUI {comfyui_version()}, Python {platform.python_version()}; "
        f"torch threads {models.threads_note()}",
        f"- Attention kernel ComfyUI chose: `{attention.optimized_attention.__name__}`",
        f"- Model: {args.model} " + MODEL_SHAPES.get(args.model, "UNet, full size")
        + f" ({bundle.parameters / 1e6:.0f} M parameters), random weights, "
        f"{str(bundle.dtype).removeprefix('torch.')} on {models.device_name()}; {args.size}x{args.size} "
        f"(latent {args.size // 8}x{args.size // 8}); text encoders with the real tokenizers and widths, "
        f"{models.TEXT_LAYERS} layers",
        f"- Sampler {SAMPLER} / {SCHEDULER}, {args.steps} steps, CFG {args.cfg}; seed {args.seed}",
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
    ]


def time_ratio(variant: Variant, base: Variant) -> float:
    """Median over rounds of (variant time / baseline time in the same round), when both ran every round.

    The runs are interleaved, so pairing by round cancels the machine's slow drift (on the 2-core VM whole
    rounds ran 20 % slower than others); otherwise the ratio of the medians.
    """
    mine, theirs = variant.result.times, base.result.times
    if len(mine) == len(theirs):
        return statistics.median(a / b for a, b in zip(mine, theirs))
    return variant.result.median_s / base.result.median_s


def rss_ratio(variant: Variant, base: Variant) -> float:
    return variant.result.peak / max(base.result.peak, 1)


def memory_ratio(variant: Variant, base: Variant) -> float:
    """The ratio a memory target is checked on: exact tensor peaks on CPU (RSS varies by ~5 % from run to
    run with glibc's heap state), max_memory_allocated on a GPU."""
    if variant.tensor_peak is not None and base.tensor_peak:
        return variant.tensor_peak / base.tensor_peak
    return rss_ratio(variant, base)


def target_status(variant: Variant, base: Variant, args: argparse.Namespace, cuda: bool) -> str:
    ratio = time_ratio(variant, base)
    memory = memory_ratio(variant, base)
    if variant.name in EDITS:
        target = EDIT_TARGETS[args.model]
        ok_time, ok_memory = ratio <= target[0], memory <= target[1]
        return ("met" if ok_time and ok_memory else "missed") + f" (<= {target[0]:.2f}x time, " \
            f"<= {target[1]:.2f}x memory)"
    if variant.name in ("negative-prompt", "direct"):
        return ("met" if ratio <= FAST_INVERSION_TARGET else "missed") + f" (<= {FAST_INVERSION_TARGET}x time)"
    if variant.name == "null-text":
        if cuda and args.model == "sd15" and args.size == 512 and args.steps == 50:
            met = variant.result.median_s <= NULL_TEXT_TARGET_S
            return ("met" if met else "missed") + f" (<= {NULL_TEXT_TARGET_S:g} s, H100)"
        return f"n/a here (<= {NULL_TEXT_TARGET_S:g} s for 50 steps at 512² on an H100)"
    return ""


def table(variants: list[Variant], by_name: dict[str, Variant], args: argparse.Namespace, cuda: bool) -> list[str]:
    tensor_column = not cuda and any(v.tensor_peak is not None for v in variants)
    memory_header = "peak memory MiB" + (" (RSS)" if not cuda else "")
    lines = [f"| variant | median s | ratio to plain | {memory_header} | memory ratio | "
             + ("tensor peak MiB | tensor ratio | " if tensor_column else "") + "runs | UNet calls/run | target |",
             "|---|---|---|---|---|" + ("---|---|" if tensor_column else "") + "---|---|---|"]
    for variant in variants:
        base = by_name.get(variant.baseline)
        result = variant.result
        time_cell = f"{time_ratio(variant, base):.2f}x" if base else "n/a"
        if base and variant is not base and len(result.times) == len(base.result.times) > 1:
            rounds = [a / b for a, b in zip(result.times, base.result.times)]
            time_cell += f" ({min(rounds):.2f}–{max(rounds):.2f})"
        spread = f" (±{result.spread / 2:.1%})" if len(result.times) > 1 else ""
        cells = [variant.name, f"{result.median_s:.2f}{spread}", time_cell, f"{result.peak / measure.MIB:.0f}",
                 f"{rss_ratio(variant, base):.2f}x" if base else "n/a"]
        if tensor_column:
            has = variant.tensor_peak is not None and base is not None and base.tensor_peak
            cells += [f"{variant.tensor_peak / measure.MIB:.0f}" if variant.tensor_peak is not None else "n/a",
                      f"{variant.tensor_peak / base.tensor_peak:.2f}x" if has else "n/a"]
        cells += [str(len(result.times)), str(max(variant.unet_calls)),
                  target_status(variant, base, args, cuda) if base else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def profile_section(slow: Variant, base: Variant, steps: int, cuda: bool, top: int = 12) -> list[str]:
    """Profile one run of each and list the operators where the slow variant spends its time."""
    log(f"profiling {slow.name} vs {base.name} ({steps} steps each)")
    with torch.inference_mode():
        base_ops = measure.profile_ops(lambda: base.run(steps), cuda)
        slow_ops = measure.profile_ops(lambda: slow.run(steps), cuda)
    kind = "self CUDA time" if cuda else "self CPU time"
    base_total, slow_total = sum(base_ops.values()), sum(slow_ops.values())
    lines = [f"torch.profiler, one {steps}-step run each, top operators of **{slow.name}** by {kind} "
             f"(total {slow_total:.1f} s vs {base_total:.1f} s for {base.name}; the profiler adds overhead, "
             "so compare the columns, not with the table above):", "",
             f"| operator | {slow.name} s | {base.name} s | difference s |", "|---|---|---|---|"]
    for name, seconds in sorted(slow_ops.items(), key=lambda kv: -kv[1])[:top]:
        other = base_ops.get(name, 0.0)
        lines.append(f"| `{name}` | {seconds:.2f} | {other:.2f} | {seconds - other:+.2f} |")
    differences = sorted(((slow_ops.get(n, 0.0) - base_ops.get(n, 0.0), n) for n in set(slow_ops) | set(base_ops)),
                         reverse=True)
    grown = [f"`{n}` {d:+.2f} s" for d, n in differences[:5] if d > 0]
    lines += ["", f"Largest increases over {base.name}: {', '.join(grown) or 'none'} "
                  f"(total {slow_total - base_total:+.2f} s)."]
    return lines


def write_report(path: Path, args: argparse.Namespace, bundle: models.Bundle, cuda: bool, variants: list[Variant],
                 repeats: dict[str, int], notes: list[str], profiles: list[list[str]], started: float) -> None:
    by_name = {v.name: v for v in variants}
    sampling = [v for v in variants if v.group == "sampling"]
    inversion = [v for v in variants if v.group == "inversion"]
    method = next((v.result.memory_method for v in variants if v.result.memory_method), "")
    lines = [f"# Prompt-to-Prompt benchmark: {args.model} {args.size}x{args.size}, "
             f"{'GPU' if cuda else 'CPU'}", ""]
    lines += machine_lines(args, bundle, cuda)
    repeat_counts = sorted(set(repeats[v.name] for v in variants))
    lines += [
        f"- Runs per variant: {', '.join(map(str, repeat_counts))} timed (see `runs`), after one {args.warmup_steps}"
        f"-step warm-up run each (1 step for null-text), interleaved round-robin (null-text last, alone); "
        "median wall time (± half the min-max spread)",
        f"- Peak memory: median over the timed runs of {method}"
        + ("" if cuda else "; tensor peak: exact peak of live CPU tensor bytes above the start, from "
                           "torch.profiler's allocation events during the warm-up run. Memory targets are checked "
                           "on the tensor peak: RSS moves by ~5 % from run to run with glibc's heap state"),
        f"- Whole benchmark took {(time.perf_counter() - started) / 60:.1f} min; other processes used at most "
        f"{max(max(v.result.others_cpu) for v in variants):.0%} of the machine's CPU time during a timed run",
        f"- Command: `{' '.join(['python', 'bench/run.py', *map(shlex.quote, sys.argv[1:])])}`"]
    lines += [f"- {note}" for note in args.note] + [""]
    if args.steps != 50:
        lines += [f"The paper samples 50 steps; this run uses {args.steps} to fit the machine. Every step does the "
                  "same work, so times scale linearly with the steps and the ratios carry over.", ""]
    if sampling:
        lines += ["## Sampling 2 rows (source + 1 edit, one shared noise, CFG)", "",
                  "Ratios are to **plain**: the same 2 rows sampled with the unpatched model. Time ratio: median over "
                  "rounds of the ratio within a round (lowest–highest round in brackets).", ""]
        lines += table(sampling, by_name, args, cuda) + [""]
    if inversion:
        lines += ["## Inversion of 1 image (NullTextInvert call alone)", "",
                  "Ratios are to **plain 1 row**: one ordinary sampling pass of the source prompt (CFG, same "
                  "steps).", ""]
        lines += table(inversion, by_name, args, cuda) + [""]
    lines += ["## Variants", ""] + [f"- **{v.name}**: {DESCRIPTIONS[v.name]}" for v in variants] + [""]
    if notes or profiles:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
        for section in profiles:
            lines += section + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    log(f"wrote {path}")


def collect_notes(variants: list[Variant], by_name: dict[str, Variant], args: argparse.Namespace,
                  cuda: bool) -> list[str]:
    """Checks that each variant did its work, and the targets missed."""
    notes = []
    busiest = max(variants, key=lambda v: max(v.result.others_cpu))
    if max(busiest.result.others_cpu) > 0.05:
        notes.append(f"**Other processes competed for the CPU** (up to {max(busiest.result.others_cpu):.0%} of it, "
                     f"during {busiest.name}): those timings are inflated; rerun on an idle machine.")
    for variant in variants:
        note = variant.check()
        if note:
            notes.append(f"{variant.name}: {note} (last run).")
        base = by_name.get(variant.baseline)
        if base is not None and target_status(variant, base, args, cuda).startswith("missed"):
            notes.append(f"**Target missed: {variant.name}**, "
                         f"{time_ratio(variant, base):.2f}x time, "
                         f"{memory_ratio(variant, base):.2f}x memory of {base.name}.")
    return notes


# --- main --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=models.FAMILIES, default="sd15")
    parser.add_argument("--size", type=int, help="image side in pixels (default 256 on CPU, 512 sd15 / 1024 "
                                                 "sdxl on a GPU)")
    parser.add_argument("--steps", type=int, help="sampling and inversion steps (default 10 on CPU, 50 on a GPU)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (default 3)")
    parser.add_argument("--nulltext-repeats", type=int,
                        help="timed runs of null-text inversion (default 1 on CPU, where one run takes minutes; "
                             "--repeats on a GPU)")
    parser.add_argument("--warmup-steps", type=int, default=3,
                        help="steps of each variant's warm-up run "
                             "(3: the self- and cross-attention windows are both open in it)")
    parser.add_argument("--cfg", type=float, help="default 7.5 (Flux: 1.0, one pass per step as "
                        "Flux dev samples; SD3: 4.5, SD3.5 medium's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", help="comma-separated variants to run (baselines are added); choices: "
                                       + ", ".join(SAMPLING + INVERSION))
    parser.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                        help="torch.profiler summaries (slowest edit vs plain, slower fast inversion and 1 step of "
                             "null-text vs plain 1 row): when their target is not met (auto; the null-text target "
                             "can only be met on a GPU), always or never")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's / OMP_NUM_THREADS)")
    parser.add_argument("--note", action="append", default=[],
                        help="a line for the results header, e.g. why repeats or steps were reduced (repeatable)")
    parser.add_argument("--out", type=Path, help="results file (default bench/results/<cpu|gpu>-<model>-<size>.md)")
    args = parser.parse_args(argv)
    args.cfg_default = args.cfg is None
    args.cfg = 7.5 if args.cfg is None else args.cfg
    if args.only:
        names = {n.strip() for n in args.only.split(",") if n.strip()}
        unknown = names - set(SAMPLING + INVERSION)
        if unknown:
            parser.error(f"unknown variants {sorted(unknown)}")
        names |= {"plain"} if names & set(SAMPLING) else set()
        names |= {f"plain {ANCESTRAL}"} if f"replace {ANCESTRAL}" in names else set()
        names |= {"plain 1 row"} if names & set(INVERSION) else set()
        args.only = names
    else:
        args.only = set()
    return args


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models.import_comfy()
    import comfy.utils

    sys.path.insert(0, str(models.TESTS_HOST))
    import pack

    cuda = models.device_name() == "cuda"
    args.size = args.size or (256 if not cuda else {"sd15": 512, "sdxl": 1024, "flux": 1024, "sd3": 1024}[args.model])
    if args.cfg_default:
        args.cfg = {"flux": 1.0, "sd3": 4.5}.get(args.model, args.cfg)  # Flux dev: one pass per step
    args.steps = args.steps or (50 if cuda else 10)
    nulltext_repeats = args.nulltext_repeats or (args.repeats if cuda else 1)
    out = args.out or models.REPO_ROOT / "bench" / "results" / f"{'gpu' if cuda else 'cpu'}-{args.model}-{args.size}.md"
    comfy.utils.PROGRESS_BAR_ENABLED = False

    log(f"building {args.model} on {models.device_name()}")
    bundle = models.make_bundle(args.model, args.seed)
    pack.load()
    import nodes

    with torch.inference_mode():
        variants = build_variants(nodes.NODE_CLASS_MAPPINGS, bundle, args.size, args.cfg, args.seed, args.only)
    counter = UNetCalls(bundle.model.model.diffusion_model)
    repeats = {v.name: nulltext_repeats if v.name == "null-text" else args.repeats for v in variants}
    log(f"{len(variants)} variants, {args.steps} steps, {args.size}x{args.size}, threads {models.threads_note()}")
    # Null-text runs alone and last: its backward passes leave glibc's heap fragmented, so runs after it
    # fault more pages back in and their RSS peaks read ~250 MiB higher (no leak: the trimmed RSS is stable).
    batches = [[v for v in variants if v.group == "sampling"],
               [v for v in variants if v.group == "inversion" and v.name != "null-text"],
               [v for v in variants if v.name == "null-text"]]
    for members in batches:
        if members:
            # A null-text step always does the same work (forward, backward, Adam), so one step warms it up.
            warmup = 1 if members[0].name == "null-text" else min(args.warmup_steps, args.steps)
            run_group(members, args.steps, warmup, repeats, cuda, counter)

    by_name = {v.name: v for v in variants}
    notes = collect_notes(variants, by_name, args, cuda)
    profiles = []
    missed = any(note.startswith("**Target missed") for note in notes)
    edits = [v for v in variants if v.name in EDITS]
    if edits and "plain" in by_name and (args.profile == "always" or (args.profile == "auto" and missed)):
        slowest = max(edits, key=lambda v: time_ratio(v, by_name["plain"]))
        profiles.append(profile_section(slowest, by_name["plain"], args.steps, cuda))
    fast = [v for v in variants if v.name in ("negative-prompt", "direct")]
    if fast and "plain 1 row" in by_name and (args.profile == "always" or (args.profile == "auto" and any(
            target_status(v, by_name["plain 1 row"], args, cuda).startswith("missed") for v in fast))):
        slowest = max(fast, key=lambda v: v.result.median_s)
        profiles.append(profile_section(slowest, by_name["plain 1 row"], args.steps, cuda))
    if "null-text" in by_name and "plain 1 row" in by_name and (args.profile == "always" or (
            args.profile == "auto" and not target_status(by_name["null-text"], by_name["plain 1 row"], args,
                                                         cuda).startswith("met"))):
        # Every null-text step does the same work (all 10 iterations with random weights): one step shows it.
        profiles.append(profile_section(by_name["null-text"], by_name["plain 1 row"], 1, cuda))
    write_report(out, args, bundle, cuda, variants, repeats, notes, profiles, started)
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
