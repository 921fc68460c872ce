"""Real-scene edits on a flow model: inverting then editing (Euler, RF-Solver) against FlowEdit, which edits without
inverting. Measured on the joint-attention demo model with scenes drawn by toy/scenes.py (never by the model), a
colour swap of one object each; writes a Markdown table.

    COMFYUI_PATH=/path/to/ComfyUI python bench/flow_edits.py --model toy/prompt_to_prompt_flux_toy.safetensors

Per method: how often the swap is made (the new colour there, the old one gone), the swapped object's IoU with the
drawn one (its shape and place kept), the other objects' IoU, the PSNR of the picture away from the swapped object
against the VAE's own decoding of the scene, and model calls per edit. These are quality numbers of one small
model, not timings.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402

STEPS, CFG, SCHEDULER = 20, 5.0, "simple"


@dataclass(frozen=True)
class Method:
    name: str
    inversion: str | None  # FlowInvert's method, or None for FlowEdit
    cross: float  # the Replace node's cross_replace_steps (attention from the source)
    self_: float
    denoise: float = 1.0  # FlowEdit's first sigma (n_max)
    cfg: float = CFG


#: The toy model draws its objects at cfg 5; inverting under guidance that strong drifts, so the inversions are
#: measured at cfg 2 too (the source row's PSNR is the inversion's reconstruction).
METHODS = (
    Method("euler inversion + replace", "euler", 0.8, 0.2),
    Method("rf-solver inversion + replace", "rf-solver", 0.8, 0.2),
    Method("euler inversion + replace, cfg 2", "euler", 0.8, 0.2, cfg=2.0),
    Method("rf-solver inversion + replace, cfg 2", "rf-solver", 0.8, 0.2, cfg=2.0),
    Method("flowedit", None, 0.0, 0.0),
    Method("flowedit, denoise 0.8", None, 0.0, 0.0, 0.8),
    Method("flowedit + replace", None, 0.8, 0.2),
    Method("flowedit + replace, cfg 2", None, 0.8, 0.2, cfg=2.0),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a joint-attention demo-model file")
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=models.REPO_ROOT / "bench" / "results" / "cpu-flow-edits-toy.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models.import_comfy(cpu=True)
    import comfy.utils
    import comfy_extras.nodes_custom_sampler as custom
    import pack
    from sampling import encode
    from toy_pictures import iou, pictures, psnr, thing

    import nodes

    sys.path.append(str(models.REPO_ROOT))  # after ComfyUI's nodes: the pack has a folder of that name
    from toy import flux_model, measure, scenes

    comfy.utils.PROGRESS_BAR_ENABLED = False
    pack.load()
    p2p = nodes.NODE_CLASS_MAPPINGS
    model, clip, vae, config = flux_model.load(args.model)
    size = scenes.SIZE * config.scale  # the pictures it was trained on: the toy world drawn `scale` times larger
    calls = [0]
    network = model.model.diffusion_model
    network.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))

    def run(method: Method, caption: str, target: str, latent: dict) -> tuple[np.ndarray, np.ndarray]:
        if method.inversion:
            with torch.inference_mode():
                source, latent = p2p["FlowInvert"]().invert(model, clip, caption, latent, method.inversion, STEPS,
                                                            SCHEDULER, method.cfg)
            sampler = (p2p["RFSolverSampler"]().sampler()[0] if method.inversion == "rf-solver"
                       else custom.KSamplerSelect().get_sampler("euler")[0])
            caption = ""
        else:
            source, sampler = model, p2p["FlowEditSampler"]().sampler()[0]
        edit, positive, batch = p2p["ReplaceEdit"]().apply(source, clip, caption, target, method.cross, method.self_,
                                                            size, size, latent=latent)
        sigmas = custom.BasicScheduler().get_sigmas(edit, SCHEDULER, STEPS, method.denoise)[0]
        out = custom.SamplerCustom().sample(edit, not method.inversion, 0, method.cfg, positive, encode(clip, ""),
                                            sampler, sigmas, batch)[0]["samples"]
        return tuple(pictures(vae, out))

    rng = np.random.default_rng(7)
    rows = {m.name: [] for m in METHODS}
    for _ in range(args.scenes):
        scene = scenes.random_scene(rng, count=2, backgrounds=scenes.MODEL_BACKGROUNDS)
        pixels, _ = scenes.draw(scene, config.scale)
        old = scene.things[0].colour
        new = next(c for c in scenes.COLOURS if c not in {t.colour for t in scene.things})
        caption = scene.caption
        target = caption.replace(old, new)
        with torch.no_grad():
            latent = nodes.VAEEncode().encode(vae, torch.from_numpy(pixels / 255.0).float()[None])[0]
            decoded = measure.at_scene_size(pictures(vae, latent["samples"])[0])  # PSNR at the world's size
        drawn = {f.colour: f.mask for f in measure.objects(pixels)}
        away = ~np.asarray(torch.nn.functional.max_pool2d(torch.from_numpy(drawn[old][None].astype(np.float32)), 9, 1,
                                                          4)[0].bool())
        for method in METHODS:
            calls[0] = 0
            source, edited = map(measure.at_scene_size, run(method, caption, target, latent))
            swapped = thing(measure, edited, new)
            made = swapped is not None and thing(measure, edited, old) is None
            others = [iou(mask, found.mask) if (found := thing(measure, edited, colour)) else 0.0
                      for colour, mask in drawn.items() if colour != old]
            rows[method.name].append({
                "made": made, "iou": iou(drawn[old], swapped.mask) if swapped else 0.0,
                "others": float(np.mean(others)), "away": psnr(edited[away], decoded[away]),
                "source": float("inf") if np.array_equal(source, decoded) else psnr(source, decoded),
                "calls": calls[0]})
        print(f"{caption} -> {new}: " + ", ".join(f"{k} {v[-1]['iou']:.2f}/{v[-1]['away']:.1f}"
                                                  for k, v in rows.items()), flush=True)

    lines = [f"# Real-scene colour swaps on the joint-attention demo model ({args.model.name})", "",
             f"{args.scenes} scenes drawn by toy/scenes.py (two objects, seed 7), one object's colour swapped; "
             f"{STEPS} steps, {SCHEDULER} schedule, cfg {CFG} unless named, SamplerCustom. Replace: "
             "cross_replace_steps 0.8, self_replace_steps 0.2.", "",
             "| method | swap made | swapped object IoU | other objects IoU | PSNR away from it (dB) "
             "| source row PSNR (dB) | model calls |", "|---|---|---|---|---|---|---|"]
    for name, found in rows.items():
        mean = lambda key: float(np.mean([f[key] for f in found]))  # noqa: E731
        lines.append(f"| {name} | {mean('made'):.0%} | {mean('iou'):.2f} | {mean('others'):.2f} | {mean('away'):.1f} "
                     f"| {mean('source'):.1f} | {mean('calls'):.0f} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
