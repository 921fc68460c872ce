"""Train the joint-attention demo model (flux_model.py) on this CPU, from the UNet demo model's VAE and CLIP-L.

    COMFYUI_PATH=/path/to/ComfyUI python -m toy.flux_train --work /tmp/flux-toy

The VAE (so the latent space) and the CLIP-L (whose pooled vector Flux reads) are the UNet demo model's, frozen:
the scenes, their encoding, the caption grammar and the measurement are the toy world's (train.py, measure.py).
What is new is trained here: the Flux-shaped transformer and its T5, with rectified flow (x_t = (1-t) x0 + t e,
the network predicts e - x0, as ComfyUI's Flux sampling reads it), t logit-normal, captions dropped for CFG.

Seeded and resumable like train.py: the encoded scenes and checkpoints (every 500 steps) stay in --work, a
snapshot of the EMA model is written every 1000 steps, and the last phase samples 100 captions with ComfyUI's
KSampler and measures them.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import flux_model, model, scenes, train

#: Share of steps whose pooled CLIP-L vector is the empty caption's while the T5 words stay: Flux's pooled vector
#: sums the caption up, and a model that could read the objects from it would leave the words' maps, which the
#: edits act on, idle.
POOLED_DROP = 0.3
#: Half the UNet's peak: transformers trained with AdamW diverge at learning rates a UNet takes.
LEARNING_RATE = 4e-4
#: Weight of the binding loss (`binding_targets`) beside the flow loss (about 0.08 late in training).
BINDING_WEIGHT = 0.1
#: What the binding loss asks of each of an object's words, in this order, before its place (`binding_targets`).
ATTRIBUTES = (("size", tuple(scenes.SIZES)), ("colour", tuple(scenes.COLOURS)), ("shape", tuple(scenes.SHAPES)))
#: The binding head's classes per target: each attribute's values, then the object's place in the caption.
CLASSES = (*(len(values) for _, values in ATTRIBUTES), scenes.MAX_OBJECTS)


def t5_ids(clip: Any, caption: str) -> list[int]:
    return [token for token, _ in clip.tokenize(caption)["t5xxl"][0]]


def binding_targets(clip: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Per caption token, the size, colour and shape of the object its phrase names, and that phrase's place
    among the caption's objects (0 for the first; [N, L, 4]; -100 for words of no object).

    Why: in Flux every text token enters the joint attention at the same RoPE position, so an image token learns
    which colour goes with which shape only from the text encoding. The UNet demo model's causal CLIP sums each
    phrase up in its last word; this T5, bidirectional and trained from nothing through the flow loss alone, did
    not learn to (a linear probe read an object's colour from its shape word's output 39 % of the time, near
    chance, after 20 000 steps), and the model drew shapes and colours unbound: blends read as circles, objects
    merged (toy/MODEL.md). A linear head on the T5's output that must read every attribute of the phrase from
    each of its words teaches the T5 to bind them; the head is for training only and never ships.

    The place, for the same reason: captions name the objects left to right, and with every text token at one
    RoPE position an image token can tell the first object's words from the second's only if the T5 says which
    is which. Bound without it, the T5 did not (a probe read the place from an object's words 51 % of the time,
    chance), and two- and three-object captions failed most, by their count of objects (toy/MODEL.md).
    """
    word_of = {t5_ids(clip, word)[0]: (slot, values.index(word))
               for slot, (_, values) in enumerate(ATTRIBUTES) for word in values}
    targets = torch.full((*tokens.shape, len(CLASSES)), -100, dtype=torch.long)
    for row, caption in enumerate(tokens.tolist()):
        place = 0
        for start in range(len(caption) - len(ATTRIBUTES) + 1):
            words = [word_of.get(token) for token in caption[start:start + len(ATTRIBUTES)]]
            if [w[0] if w else None for w in words] == list(range(len(ATTRIBUTES))):  # size, colour, shape in a row
                targets[row, start:start + len(ATTRIBUTES)] = torch.tensor([*(index for _, index in words), place])
                place += 1
    return targets


@torch.no_grad()
def pooled_vectors(clip_l: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The frozen CLIP-L's pooled vector of every caption (what FluxClipModel gives the model as ``y``), fp16."""
    return torch.cat([clip_l(tokens[i:i + 500].tolist())[1].half() for i in range(0, len(tokens), 500)])


def train_flux(config: flux_model.FluxToyConfig, data: dict[str, torch.Tensor], clip: Any, steps: int, batch: int,
               seed: int, checkpoint: Path, snapshot: Callable[[torch.nn.Module, torch.nn.Module], None],
               bf16: bool, learning_rate: float = LEARNING_RATE, adaln_zero: bool = False,
               start_from: Path | None = None, binding_weight: float = BINDING_WEIGHT
               ) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Rectified flow with t = sigmoid(N(0, 1)), captions dropped 10 % of the time and the pooled vector alone
    ``POOLED_DROP`` of the time, EMA, one one-cycle schedule; ``checkpoint`` (every 500 steps) resumes it.
    ``adaln_zero``: start every block as the identity (DiT's adaLN-Zero), not only the final projection.
    ``start_from``, another run's checkpoint, gives the networks and their EMA to start from (a second cycle).
    ``binding_weight`` weighs the binding loss (`binding_targets`; 0: the flow loss alone).

    Runs with ComfyUI's ``in_training`` flag up (where the host has it), as its own training node does: newer
    ComfyUI applies RoPE with a fused kernel that has no backward, and takes the torch path while it is set.
    """
    import comfy.model_management as mm

    training_before = getattr(mm, "in_training", None)
    mm.in_training = True
    try:
        return _train_flux(config, data, clip, steps, batch, seed, checkpoint, snapshot, bf16, learning_rate,
                           adaln_zero, start_from, binding_weight)
    finally:
        mm.in_training = training_before


def _train_flux(config: flux_model.FluxToyConfig, data: dict[str, torch.Tensor], clip: Any, steps: int, batch: int,
                seed: int, checkpoint: Path, snapshot: Callable[[torch.nn.Module, torch.nn.Module], None],
                bf16: bool, learning_rate: float, adaln_zero: bool, start_from: Path | None,
                binding_weight: float) -> tuple[torch.nn.Module, torch.nn.Module]:
    dit = flux_model.build_dit(config).diffusion_model
    _, t5 = flux_model.encoders(clip)
    train.initialise(dit, seed)
    train.initialise(t5.transformer, seed + 1)
    with torch.no_grad():
        zeroed = [dit.final_layer.linear]
        if adaln_zero:  # every block starts as the identity: its gates (and shifts and scales) zero
            zeroed += [m.lin for m in dit.modules() if type(m).__name__ == "Modulation"]
            zeroed.append(dit.final_layer.adaLN_modulation[-1])
        for layer in zeroed:
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()
    for network in (dit, t5):
        network.train()
        network.requires_grad_(True)
        train.clone_norm_inputs(network)
    empty = torch.tensor(t5_ids(clip, ""))
    run = train.Training.start(dit, t5, train.used_tokens(data["t5"], empty.tolist()), learning_rate, steps)
    ema_dit, ema_t5, rows, trained, parameters = run.ema, run.ema_text, run.rows, run.trained, run.parameters
    optimiser, schedule = run.optimiser, run.schedule
    networks = ((dit, "dit"), (t5, "t5"), (ema_dit, "ema_dit"), (ema_t5, "ema_t5"))
    first = run.resume(checkpoint, networks)
    if first == 1 and start_from is not None:
        train.resume(start_from, torch.load(start_from, weights_only=False), networks)
    rows.read()
    start = Binding.beside(checkpoint) if first > 1 else start_from and Binding.beside(start_from)
    binding = Binding(config, Binding.beside(checkpoint), start)
    empty_pooled = data["empty_pooled"].float()
    data = data | {"binding": binding_targets(clip, data["t5"])}
    stream = train.batches(data, batch, seed + first, ("t5", "pooled", "binding"))
    generator = torch.Generator().manual_seed(seed + first)
    start, running = time.time(), 0.0
    for step in range(first, steps + 1):
        latent, tokens, pooled, targets = next(stream)
        drop = torch.rand(batch, generator=generator) < train.UNCONDITIONAL
        tokens = torch.where(drop[:, None], empty, tokens)
        targets = torch.where(drop[:, None, None], -100, targets)
        alone = drop | (torch.rand(batch, generator=generator) < POOLED_DROP)
        pooled = torch.where(alone[:, None], empty_pooled, pooled.float())
        t = torch.sigmoid(torch.randn(batch, generator=generator))
        noise = torch.randn(latent.shape, generator=generator)
        noisy = (1 - t.view(-1, 1, 1, 1)) * latent + t.view(-1, 1, 1, 1) * noise
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            context = t5(tokens.tolist())[0]
            predicted = dit(noisy, t, context=context, y=pooled).float()
        flow_loss = (predicted - (noise - latent)).pow(2).mean()
        binding_loss = binding.loss(context, targets)
        optimiser.zero_grad(set_to_none=True)
        binding.optimiser.zero_grad(set_to_none=True)
        (flow_loss + binding_weight * binding_loss).backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimiser.step()
        binding.optimiser.step()
        schedule.step()
        train.average_into(trained, step)
        running = 0.99 * running + 0.01 * flow_loss.item() if step > first else flow_loss.item()
        binding.record(binding_loss.item())
        if step % 100 == 0 or step == steps:
            train.progress(checkpoint.stem, step - first + 1, steps - first + 1, start, running)
        if step % 500 == 0 or step == steps:
            print(f"[binding] {step} loss {binding.running:.4f}", flush=True)
            binding.save()
            rows.write()
            train.save_checkpoint(checkpoint, {
                "step": step, "dit": dit.state_dict(), "t5": t5.state_dict(), "ema_dit": ema_dit.state_dict(),
                "ema_t5": ema_t5.state_dict(), "optimiser": optimiser.state_dict(), "schedule": schedule.state_dict()})
        if step % 1000 == 0:
            snapshot(ema_dit, ema_t5)
    rows.hook.remove()
    return ema_dit.eval(), ema_t5.eval()


class Binding:
    """The binding loss's linear head on the T5's output and its own AdamW (training only: neither ships),
    kept beside the run's checkpoint so a resumed run goes on with them, and a second cycle with the first's: a
    new head's random readout would first pull the bound T5 towards itself."""

    def __init__(self, config: flux_model.FluxToyConfig, path: Path, start: Path | None) -> None:
        self.path, self.running = path, None
        self.head = torch.nn.Linear(config.t5_width, sum(CLASSES))
        self.optimiser = torch.optim.AdamW(self.head.parameters(), lr=1e-3, weight_decay=0)
        if start is not None and start.exists():
            state = torch.load(start)
            self.head.load_state_dict(state["head"])
            self.optimiser.load_state_dict(state["optimiser"])

    @staticmethod
    def beside(checkpoint: Path) -> Path:
        """Where a run whose checkpoint is ``checkpoint`` keeps its head."""
        return checkpoint.with_name(checkpoint.stem + "_binding.pt")

    def loss(self, context: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of every attribute, and the place, read from every word of an object's phrase."""
        logits = self.head(context.float()).split(CLASSES, dim=-1)
        return sum(torch.nn.functional.cross_entropy(part.flatten(0, 1), targets[..., slot].flatten(),
                                                     ignore_index=-100) for slot, part in enumerate(logits))

    def record(self, loss: float) -> None:
        """A running mean of the loss, as the flow loss's, for the progress lines."""
        self.running = loss if self.running is None else 0.99 * self.running + 0.01 * loss

    def save(self) -> None:
        train.save_checkpoint(self.path, {"head": self.head.state_dict(), "optimiser": self.optimiser.state_dict()})


def adapted_vae(autoencoder: torch.nn.Module, path: Path, steps: int, seed: int, scale: int) -> torch.nn.Module:
    """The UNet demo model's VAE adapted to pictures ``scale`` times larger (`train.adapt_vae`), kept in ``path``
    so a resumed run encodes and ships the same one."""
    if path.exists():
        autoencoder.load_state_dict(torch.load(path))
    else:
        autoencoder, factor = train.adapt_vae(autoencoder, steps, seed, scale)
        torch.save(autoencoder.state_dict(), path)
        print(f"[adapt] latent rescaled by {factor:.3f}", flush=True)
    print(f"[adapt] PSNR {train.vae_psnr(autoencoder, seed + 1, 100, scale):.1f} dB on 100 new scenes at {scale}x",
          flush=True)
    return autoencoder


def file_start(path: Path, checkpoint: Path) -> tuple[flux_model.FluxToyConfig, dict[str, torch.Tensor]]:
    """A demo-model file's (a run's EMA snapshot's) config and VAE, its networks written to ``checkpoint`` as the
    start of a second cycle (each its own EMA).

    Why: a run's checkpoint, with its AdamW state, stays on the machine that trained it; its snapshot is the
    file that travels (toy/MODEL.md). A new one-cycle schedule from it is a warm restart: the binding head
    starts afresh (the bound T5 holds the binding; a new head reads it again within a few hundred steps).
    """
    config, parts = flux_model.read(path)
    base, clip = flux_model.networks(config, parts)
    _, t5 = flux_model.encoders(clip)
    dit, text = base.diffusion_model.state_dict(), t5.state_dict()
    train.save_checkpoint(checkpoint, {"dit": dit, "t5": text, "ema_dit": dit, "ema_t5": text})
    return config, parts["vae"]


def weight(text: str) -> float:
    """An argparse type: a loss weight, a finite number of at least 0 (0 turns that loss off)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a weight of at least 0, like 0.1 (0 turns the loss off)")
    return value


def block_counts(text: str) -> tuple[int, int]:
    """An argparse type: 'DOUBLE,SINGLE' block counts, at least one double block (where the word maps are read)."""
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or int(parts[0]) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not DOUBLE,SINGLE block counts like 3,3 (at least one double)")
    return int(parts[0]), int(parts[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for resumable intermediate results")
    shipped = Path(__file__).with_name("prompt_to_prompt_flux_toy.safetensors")
    parser.add_argument("--output", type=Path, default=shipped, help=f"the model file to write (default {shipped})")
    parser.add_argument("--unet-model", type=Path, default=Path(__file__).with_name("prompt_to_prompt_toy.safetensors"),
                        help="the UNet demo-model file whose VAE and CLIP-L this model uses")
    parser.add_argument("--comfyui", help="ComfyUI folder (default: COMFYUI_PATH)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", type=train.at_least(1), default=24000)
    parser.add_argument("--steps", type=train.at_least(1), default=12000)
    parser.add_argument("--batch", type=train.at_least(1), default=32)
    parser.add_argument("--hidden", type=train.at_least(16), default=flux_model.FluxToyConfig.hidden)
    default = flux_model.FluxToyConfig
    parser.add_argument("--blocks", type=block_counts, default=(default.double_blocks, default.single_blocks),
                        metavar="DOUBLE,SINGLE",
                        help=f"double- and single-stream blocks (default {default.double_blocks},"
                             f"{default.single_blocks}; a single block costs 0.4 of a double one: toy/MODEL.md)")
    parser.add_argument("--t5-layers", type=train.at_least(1), default=default.t5_layers,
                        help=f"layers of the T5 (default {default.t5_layers}; each costs 0.16 M parameters at width "
                             f"{default.t5_width}: toy/MODEL.md)")
    parser.add_argument("--scale", type=train.at_least(1), default=default.scale,
                        help="draw the scenes this many times the toy world's 128 pixels, with the UNet model's "
                             "VAE adapted to that size (default 1; toy/MODEL.md)")
    parser.add_argument("--adapt-steps", type=train.at_least(1), default=400,
                        help="steps adapting the VAE to a --scale above 1 (batches of 12 crops)")
    parser.add_argument("--fp32", action="store_true", help="train in fp32 (default: bf16 autocast where native)")
    parser.add_argument("--adaln-zero", action="store_true",
                        help="start every block as the identity (zero modulation, DiT's adaLN-Zero; toy/MODEL.md)")
    parser.add_argument("--second-cycle", type=Path, metavar="CHECKPOINT",
                        help="start from a finished run's checkpoint (its --work's flux.pt), or from a demo-model "
                             "file it wrote (its widths and VAE too): a second one-cycle schedule of --steps at "
                             "half the peak learning rate")
    parser.add_argument("--binding-weight", type=weight, default=BINDING_WEIGHT,
                        help=f"weight of the loss that teaches the T5 to bind each object's words (default "
                             f"{BINDING_WEIGHT}; 0: the flow loss alone; toy/MODEL.md)")
    parser.add_argument("--evaluate", type=train.at_least(1), default=100, help="captions sampled to measure accuracy")
    args = parser.parse_args(argv)
    train.use_comfyui(args.comfyui)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    began = time.time()

    unet_config, unet_parts = model.read(args.unet_model)
    config = flux_model.FluxToyConfig(hidden=args.hidden, double_blocks=args.blocks[0], single_blocks=args.blocks[1],
                                      t5_layers=args.t5_layers, scale=args.scale,
                                      clip=dataclasses.asdict(unet_config) | {"notes": {}})
    start_from = args.second_cycle
    if start_from is not None and start_from.suffix == ".safetensors":
        try:
            config, vae = file_start(start_from, args.work / "start.pt")
        except (ValueError, OSError) as error:
            parser.error(f"--second-cycle: {error} Give a file toy.flux_train wrote, or a run's flux.pt.")
        start_from = args.work / "start.pt"
        if config.scale > 1 and not (args.work / "vae.pt").exists():  # the file's adapted VAE encodes the scenes
            torch.save(vae, args.work / "vae.pt")
    autoencoder = model.build_autoencoder(unet_config)
    autoencoder.load_state_dict(unet_parts["vae"])
    autoencoder.eval()
    bf16 = not args.fp32 and train.native_bf16()
    if config.scale > 1:  # in fp32: trained under bf16 autocast, the VAE decodes garbage outside it (toy/MODEL.md)
        autoencoder = adapted_vae(autoencoder, args.work / "vae.pt", args.adapt_steps, args.seed + 6, config.scale)
    clip = flux_model.build_clip(config)
    clip_l, _ = flux_model.encoders(clip)
    clip_l.transformer.load_state_dict(unet_parts["clip"])
    clip_l.requires_grad_(False)
    path = args.work / "scenes.pt"
    if not path.exists():
        data = train.encode_scenes(autoencoder, {"clip": lambda c: train.token_ids(clip, c),
                                                 "t5": lambda c: t5_ids(clip, c)}, args.scenes, args.seed + 3,
                                   scale=config.scale, bf16=bf16 and config.scale > 1)
        data["pooled"] = pooled_vectors(clip_l, data["clip"])
        data["empty_pooled"] = pooled_vectors(clip_l, torch.tensor([train.token_ids(clip, "")]))
        torch.save(data, path)
    data = torch.load(path)
    clip_tokens = train.used_tokens(data["clip"], train.token_ids(clip, ""))
    t5_tokens = train.used_tokens(data["t5"], t5_ids(clip, ""))

    def snapshot(dit: torch.nn.Module, t5: torch.nn.Module) -> None:
        flux_model.save(args.output, config, dit, clip_l, t5, autoencoder.state_dict(), clip_tokens, t5_tokens)

    print(f"[flux] {'bf16 autocast' if bf16 else 'fp32'}", flush=True)
    rate = LEARNING_RATE / 2 if args.second_cycle else LEARNING_RATE
    snapshot(*train_flux(config, data, clip, args.steps, args.batch, args.seed + 4, args.work / "flux.pt",
                         snapshot, bf16, rate, adaln_zero=args.adaln_zero, start_from=start_from,
                         binding_weight=args.binding_weight))
    size = args.output.stat().st_size / 2 ** 20
    print(f"wrote {args.output} ({size:.1f} MiB) after {(time.time() - began) / 60:.1f} min", flush=True)
    scores = train.caption_accuracy(args.output, args.evaluate, args.seed + 5, load=flux_model.load,
                                    scheduler="simple")
    print(f"[evaluate] {args.evaluate} captions: " + ", ".join(f"{k} {v:.0%}" for k, v in scores.items()),
          flush=True)


if __name__ == "__main__":
    main()
