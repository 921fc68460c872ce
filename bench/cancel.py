"""Cancel latency: how long ComfyUI's cancel takes to stop each long loop of the pack, on a full-size UNet.

The loops: DDIM inversion (every NullTextInvert mode), the null-text optimisation, and sampling with
attention recording (AttentionStore, whose loop is ComfyUI's sampler). Each is started in the thread that
runs it in ComfyUI, with ComfyUI's progress hook installed as its server installs it (the sampler's cancel
check). A forward pre-hook on the UNet raises the cancel flag as a chosen model evaluation begins, the worst
moment: the whole evaluation is still ahead. The latency is the time from the flag to the interrupt
exception, reported against the mean time of one evaluation (forward, or forward + backward in the
optimisation) measured in the same run.

    COMFYUI_PATH=/path/to/ComfyUI OMP_NUM_THREADS=2 python bench/cancel.py          # CPU: SD1.5, 256x256

The table goes to bench/results/<cpu|gpu>-cancel-<model>-<size>.md (or --out) and is printed.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models  # noqa: E402

PROMPT = "a photo of a cat riding a bicycle"


class Clock:
    """Times the UNet's evaluations (forward, and backward when there is one) and cancels at one of them."""

    def __init__(self, unet: torch.nn.Module, cancel_at: int) -> None:
        self.cancel_at, self.forwards = cancel_at, 0
        self.cancelled_at: float | None = None
        self.starts: list[float] = []
        self.hooks = [unet.register_forward_pre_hook(self.forward)]

    def forward(self, module: torch.nn.Module, args: object) -> None:
        import comfy.model_management

        self.forwards += 1
        self.starts.append(time.perf_counter())
        if self.forwards == self.cancel_at:
            self.cancelled_at = self.starts[-1]
            comfy.model_management.interrupt_current_processing(True)

    def evaluation_s(self) -> float:
        """The evaluation before the cancelled one, start to start: its forward and backward passes, if any."""
        return self.starts[self.cancel_at - 1] - self.starts[self.cancel_at - 2]

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


def measure(name: str, run: Callable[[], object], unet: torch.nn.Module, cancel_at: int) -> str:
    import comfy.model_management

    clock = Clock(unet, cancel_at)
    try:
        run()
    except comfy.model_management.InterruptProcessingException:
        stopped = time.perf_counter()
    else:
        raise AssertionError(f"{name}: the run ended before evaluation {cancel_at}; nothing was cancelled")
    finally:
        clock.remove()
        comfy.model_management.interrupt_current_processing(False)
    latency, evaluation = stopped - clock.cancelled_at, clock.evaluation_s()
    line = (f"| {name} | {cancel_at} | {evaluation:.2f} s | {latency:.2f} s | {latency / evaluation:.2f} | "
            f"{clock.forwards - cancel_at} |")
    print(line, flush=True)
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd15", choices=models.FAMILIES)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, help="results file (default: bench/results/<device>-cancel-...md)")
    parser.add_argument("--note", default="", help="a line for the results header")
    args = parser.parse_args(argv)
    models.import_comfy()
    import comfy.model_management
    import comfy.utils

    sys.path.insert(0, str(models.TESTS_HOST))
    import pack

    pack.load()
    import nodes

    # What ComfyUI's server does in its progress hook (main.py, hijack_progress): samplers check cancel there.
    comfy.utils.set_progress_bar_global_hook(
        lambda *args, **kwargs: comfy.model_management.throw_exception_if_processing_interrupted())
    bundle = models.make_bundle(args.model)
    model, clip = bundle.model, bundle.clip
    unet = model.model.diffusion_model
    latent = nodes.EmptyLatentImage().generate(args.size, args.size, 1)[0]
    photo = {"samples": torch.randn_like(latent["samples"])}
    invert = nodes.NODE_CLASS_MAPPINGS["NullTextInvert"]()
    steps = args.steps

    def inversion(mode: str) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return invert.invert(model, clip, PROMPT, photo, mode, steps, 7.5, "ddim_uniform")
        return run

    stored, positive, stored_latent, _ = nodes.NODE_CLASS_MAPPINGS["AttentionStore"]().apply(
        model, clip, PROMPT, "1/4", 0.0, 1.0, args.size, args.size, True)
    negative = nodes.CLIPTextEncode().encode(clip, "")[0]

    def recording() -> object:
        with torch.inference_mode():
            return nodes.common_ksampler(stored, 0, steps, 7.5, "ddim", "ddim_uniform", positive, negative,
                                         stored_latent)

    command = shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [f"# Cancel latency: {args.model} {args.size}x{args.size}, {steps} steps, {models.device_name()}",
             "", f"`python bench/cancel.py {command}`, torch threads {models.threads_note()}, "
             f"{time.strftime('%Y-%m-%d')}. The cancel flag is raised as the given model evaluation begins.",
             *(["", args.note] if args.note else []), "",
             "| loop | cancelled at evaluation | one evaluation | cancel latency | latency / evaluation | "
             "evaluations begun after the cancel |", "|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    lines.append(measure("DDIM inversion (negative-prompt)", inversion("negative-prompt"), unet, steps // 2))
    # null-text: `steps` inversion forwards, then per step 1 conditional forward and up to 10 iterations
    lines.append(measure("null-text optimisation, step 1, iteration 3", inversion("null-text"), unet, steps + 4))
    lines.append(measure("sampling with attention recording (self-attention on)", recording, unet, steps // 2))
    out = args.out or (models.REPO_ROOT / "bench" / "results" /
                       f"{models.device_name()}-cancel-{args.model}-{args.size}.md")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
