"""Train the demo model from nothing on this CPU: the VAE, then the UNet and text encoder together, in two
one-cycle schedules (the second on twice the scenes at half the peak learning rate; ``--second-steps 0``: one).

    COMFYUI_PATH=/path/to/ComfyUI python -m toy.train --work /tmp/toy --output toy/prompt_to_prompt_toy.safetensors

The shipped file is such a run with ``--unet-widths 64,64,128 --second-steps 6000``, fine-tuned twice with
``--finetune FILE --scenes 8000 --background-first --blank-padding 0.5`` (``--unet-steps`` 1500, then 2500;
toy/MODEL.md gives every command).

Seeded and resumable: every phase leaves its result in --work (VAE weights, encoded scenes, UNet checkpoints),
so a rerun continues where the last one stopped. The last phase loads the written file the way the loader node
does, samples 100 captions with ComfyUI's own KSampler and measures them (measure.py), and prints the share
of pictures that match their caption.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import measure, model, scenes

#: SD1.5's latent scale (comfy.latent_formats.SD15): the VAE is rescaled so that scaled latents have unit std.
LATENT_SCALE = 0.18215
UNCONDITIONAL = 0.1
EMA = 0.999
LEARNING_RATE = 8e-4
#: The second cycle's peak learning rate: it starts from a trained model, so a smaller peak keeps what it knows.
SECOND_LEARNING_RATE = 4e-4
#: A fine-tune's peak (--finetune): it starts from a finished model, so half the second cycle's again.
FINETUNE_LEARNING_RATE = 2e-4
#: Offset noise: a per-sample, per-channel constant of this std added to the training noise. SD's schedule keeps
#: some signal at t=999, so a model trained without it cannot move a picture's mean away from its starting
#: noise's, and a toy world of flat white and black backgrounds came out mid-gray (docs/toy-world.md).
OFFSET_NOISE = 0.1


def use_comfyui(root: str | None) -> None:
    """Make ComfyUI importable, on the CPU unless a GPU is there."""
    root = root or os.environ.get("COMFYUI_PATH")
    if not root or not (Path(root) / "comfy").is_dir():
        sys.exit("Set COMFYUI_PATH (or --comfyui) to a ComfyUI folder.")
    sys.path.insert(0, str(Path(root).resolve()))
    import comfy.cli_args

    comfy.cli_args.args.cpu = not torch.cuda.is_available()
    import utils.install_util  # noqa: F401  (ComfyUI's utils package, before comfy/ shadows it)


def initialise(module: torch.nn.Module, seed: int) -> None:
    """PyTorch's default initialisation for every layer (ComfyUI's layers skip it), embeddings N(0, 0.02).

    Norms are found by their type's name, not the module's: the UNet's ResBlocks name theirs ``in_layers.0``, and
    a zero norm weight in front of the zero-initialised output conv would leave both without a gradient for good.
    Flux's QK norms and T5's norms are ComfyUI's own RMSNorm classes, no torch norm: zeroed, a query's and a key's
    scales are each other's only gradient, and attention stays uniform however long the model trains.
    """
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            for name, param in layer.named_parameters(recurse=False):
                if "Norm" in type(layer).__name__:
                    param.fill_(0.0 if name == "bias" else 1.0)  # "weight", or "scale" (Flux's RMSNorm before 0.33)
                elif isinstance(layer, torch.nn.Embedding):
                    param.normal_(0, 0.02)
                elif param.dim() == 1:
                    param.zero_()
                else:
                    torch.nn.init.kaiming_uniform_(param, a=math.sqrt(5))


def progress(phase: str, step: int, total: int, start: float, loss: float) -> None:
    elapsed = time.time() - start
    eta = elapsed / max(step, 1) * (total - step)
    print(f"[{phase}] {step}/{total} loss {loss:.5f} {elapsed / 60:5.1f} min, {eta / 60:5.1f} min left", flush=True)


def scene_batch(rng: np.random.Generator, size: int, backgrounds: tuple[str, ...] = tuple(scenes.BACKGROUNDS),
                counts: tuple[float, ...] | None = None, background_first: bool = False, scale: int = 1
                ) -> tuple[torch.Tensor, list[str]]:
    """Pictures in [-1, 1], NCHW, and their captions; ``counts`` weighs scenes of 1, 2, 3 objects (None: even);
    ``background_first`` names the background first in every second caption (the same scenes either way);
    ``scale`` draws them that many times larger (`scenes.draw`)."""
    share = None if counts is None else np.asarray(counts) / sum(counts)
    drawn = [scenes.random_scene(rng, None if share is None else int(rng.choice(len(share), p=share)) + 1,
                                 backgrounds) for _ in range(size)]
    pixels = np.stack([scenes.draw(s, scale)[0] for s in drawn]).astype(np.float32) / 127.5 - 1
    captions = [s.background_first_caption if background_first and i % 2 else s.caption for i, s in enumerate(drawn)]
    return torch.from_numpy(pixels).permute(0, 3, 1, 2), captions


def crops(rng: np.random.Generator, size: int, scale: int = 1) -> torch.Tensor:
    """One crop of a quarter of ``size`` new pictures (64x64 of 128x128 at ``scale`` 1): the VAE is
    convolutional, so crops teach it 4x faster."""
    pixels, _ = scene_batch(rng, size, scale=scale)
    side = 64 * scale
    top, left = rng.integers(0, scenes.SIZE * scale - side, 2)
    return pixels[:, :, top:top + side, left:left + side]


def moments(autoencoder: torch.nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, logvar = autoencoder.quant_conv(autoencoder.encoder(pixels)).chunk(2, dim=1)
    return mean, logvar.clamp(-30, 20)


def optimise(phase: str, parameters: list[torch.nn.Parameter], lr: float, steps: int, seed: int,
             loss_of: Callable[[torch.Tensor], torch.Tensor], scale: int = 1) -> None:
    """AdamW on a one-cycle schedule over ``steps`` batches of 12 new crops (`crops`), with progress lines."""
    optimiser = torch.optim.AdamW(parameters, lr=lr, weight_decay=0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, lr, total_steps=steps, pct_start=0.05)
    rng, start, running = np.random.default_rng(seed), time.time(), 0.0
    for step in range(1, steps + 1):
        loss = loss_of(crops(rng, 12, scale))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
        if step % 100 == 0 or step == steps:
            progress(phase, step, steps, start, running)


def vae_loss(autoencoder: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The reconstruction (MSE) of a sampled latent, and a KL term just large enough to keep the latents bounded."""

    def loss(pixels: torch.Tensor) -> torch.Tensor:
        mean, logvar = moments(autoencoder, pixels)
        latent = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        decoded = autoencoder.decoder(autoencoder.post_quant_conv(latent))
        kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).mean()
        return torch.nn.functional.mse_loss(decoded, pixels) + 1e-6 * kl

    return loss


def train_vae(config: model.ToyConfig, steps: int, seed: int) -> tuple[torch.nn.Module, float]:
    autoencoder = model.build_autoencoder(config)
    initialise(autoencoder, seed)
    optimise("vae", list(autoencoder.parameters()), 1e-3, steps, seed, vae_loss(autoencoder))
    autoencoder.eval()
    return autoencoder, rescale_latents(autoencoder, seed)


def adapt_vae(autoencoder: torch.nn.Module, steps: int, seed: int, scale: int) -> tuple[torch.nn.Module, float]:
    """A trained VAE fine-tuned whole on pictures drawn ``scale`` times larger, its latents rescaled there.

    Why: the same scenes drawn twice as large come out of the 128-pixel VAE at 17.7 dB (22.3 at their own size)
    with the colours of large flat areas drifting, so that a third of them read wrong (toy/MODEL.md): its
    GroupNorms and its receptive field only ever saw objects at most six latent pixels wide."""
    tuned = copy.deepcopy(autoencoder).train().requires_grad_(True)
    optimise("adapt", list(tuned.parameters()), 3e-4, steps, seed, vae_loss(tuned), scale)
    tuned.eval().requires_grad_(False)
    return tuned, rescale_latents(tuned, seed, scale)


def finetune_decoder(autoencoder: torch.nn.Module, steps: int, seed: int) -> torch.nn.Module:
    """Sharpen the decoder with the encoder frozen (as SD's fine-tuned decoders): the latent space the UNet learnt
    stays exactly the same. L1 + MSE, so edges and small shapes come out crisp."""
    tuned = copy.deepcopy(autoencoder)
    tuned.requires_grad_(False)
    decoder = [*tuned.decoder.parameters(), *tuned.post_quant_conv.parameters()]
    for param in decoder:
        param.requires_grad_(True)

    def loss(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            mean, logvar = moments(tuned, pixels)
            latent = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        decoded = tuned.decoder(tuned.post_quant_conv(latent))
        return (decoded - pixels).abs().mean() + torch.nn.functional.mse_loss(decoded, pixels)

    optimise("decoder", decoder, 3e-4, steps, seed, loss)
    return tuned.eval()


@torch.no_grad()
def rescale_latents(autoencoder: torch.nn.Module, seed: int, scale: int = 1) -> float:
    """Scale the latent space (exactly: encoder out, decoder in) so SD1.5's 0.18215 gives unit-std latents."""
    pixels, _ = scene_batch(np.random.default_rng(seed + 1), 256 // scale ** 2, scale=scale)
    mean, _ = moments(autoencoder, pixels)
    factor = 1 / LATENT_SCALE / mean.std().item()
    autoencoder.quant_conv.weight[:4] *= factor
    autoencoder.quant_conv.bias[:4] *= factor
    autoencoder.quant_conv.bias[4:] += 2 * math.log(factor)
    autoencoder.post_quant_conv.weight[:, :4] /= factor
    return factor


@torch.no_grad()
def vae_psnr(autoencoder: torch.nn.Module, seed: int, count: int = 200, scale: int = 1) -> float:
    pixels, _ = scene_batch(np.random.default_rng(seed), count, scale=scale)
    mean, _ = moments(autoencoder, pixels)
    decoded = autoencoder.decoder(autoencoder.post_quant_conv(mean)).clamp(-1, 1)
    mse = ((decoded - pixels) / 2).pow(2).mean().item()
    return 10 * math.log10(1 / mse)


@torch.no_grad()
def encode_scenes(autoencoder: torch.nn.Module, tokenizers: dict[str, Callable[[str], list[int]]], count: int,
                  seed: int, counts: tuple[float, ...] | None = None, background_first: bool = False,
                  scale: int = 1, bf16: bool = False) -> dict[str, torch.Tensor]:
    """``count`` seeded scenes on the model's backgrounds as latent means and stds (fp16) and, under each name of
    ``tokenizers``, their captions' tokens (``counts``, ``background_first`` and ``scale`` as in `scene_batch`;
    batches of an even size keep every second). ``bf16`` encodes under bf16 autocast (half the time here)."""
    rng, means, stds, start = np.random.default_rng(seed), [], [], time.time()
    tokens: dict[str, list[list[int]]] = {name: [] for name in tokenizers}
    for done in range(0, count, 250):
        pixels, captions = scene_batch(rng, min(250, count - done), scenes.MODEL_BACKGROUNDS, counts,
                                       background_first, scale)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            mean, logvar = moments(autoencoder, pixels)
        means.append(mean.half())
        stds.append((0.5 * logvar).exp().half())
        for name, tokenize in tokenizers.items():
            tokens[name] += [tokenize(c) for c in captions]
        progress("encode", done + len(captions), count, start, 0.0)
    return {"mean": torch.cat(means), "std": torch.cat(stds)} | {k: torch.tensor(v) for k, v in tokens.items()}


def token_ids(clip, caption: str) -> list[int]:
    return [token for token, _ in clip.tokenize(caption)["l"][0]]


def used_tokens(tokens: torch.Tensor, empty: list[int]) -> list[int]:
    """The tokens of the scenes' captions and of the empty one: all the text encoder ever reads in training."""
    return sorted({int(t) for t in tokens.unique()} | set(empty))


class CaptionRows:
    """The token-embedding rows the captions use, trained in place of CLIP's whole table of 49408.

    ComfyUI's CLIP embeds each caption of a batch on its own, so training the table made its 12.6 MB gradient
    dense once per caption (32 times a step), and AdamW and the EMA swept 3.2 M entries, where the grammar uses
    18 rows and every other row's gradient is zero. A forward hook on the table reads these rows instead: the
    same updates (AdamW without weight decay leaves a row of zero gradients where it is), a tenth less time a
    step (toy/MODEL.md). ``write`` puts them and their EMA back into the tables, which files and checkpoints keep.
    """

    def __init__(self, text: torch.nn.Module, ema_text: torch.nn.Module, ids: list[int]) -> None:
        self.tables = (text.transformer.get_input_embeddings(), ema_text.transformer.get_input_embeddings())
        self.ids = torch.tensor(ids)
        self.rows = torch.nn.Parameter(self.tables[0].weight[self.ids].clone())
        self.average = self.tables[1].weight[self.ids].clone()
        lookup = torch.full((self.tables[0].num_embeddings,), len(ids))
        lookup[self.ids] = torch.arange(len(ids))
        self.tables[0].weight.requires_grad_(False)
        self.hook = self.tables[0].register_forward_hook(
            lambda _, inputs, out: self.rows[lookup[inputs[0]]].to(out.dtype))

    def read(self) -> None:
        """Take the rows from the tables (after a checkpoint or a start file was loaded into them)."""
        with torch.no_grad():
            self.rows.copy_(self.tables[0].weight[self.ids])
            self.average.copy_(self.tables[1].weight[self.ids])

    def write(self) -> None:
        with torch.no_grad():
            self.tables[0].weight[self.ids] = self.rows
            self.tables[1].weight[self.ids] = self.average


def batches(data: dict[str, torch.Tensor], size: int, seed: int, keys: tuple[str, ...] = ("tokens",)
            ) -> Iterator[tuple[torch.Tensor, ...]]:
    """Endless random batches: latents drawn from the scenes' latent distributions, scaled, and ``keys``' rows."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        pick = torch.randint(len(data["mean"]), (size,), generator=generator)
        latent = data["mean"][pick].float() + data["std"][pick].float() * torch.randn(
            (size, *data["mean"].shape[1:]), generator=generator)
        yield (latent * LATENT_SCALE, *(data[key][pick] for key in keys))


def average_into(trained: list[tuple[torch.Tensor, torch.Tensor]], step: int) -> None:
    """One EMA step of every (parameter, average) pair, with the usual warm-up of the decay."""
    decay = min(EMA, (1 + step) / (10 + step))
    with torch.no_grad():
        for mine, average in trained:
            average.lerp_(mine, 1 - decay)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` beside ``path`` and move it there, so an interrupted save never leaves half a checkpoint."""
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def clone_norm_inputs(module: torch.nn.Module) -> None:
    """Make a network of ComfyUI's trainable: its layers add residuals in place (``x += ...``), which autograd
    refuses when ``x`` was saved by a norm; a copy of each norm's input keeps inference code untouched."""
    for layer in module.modules():
        if "Norm" in type(layer).__name__:
            layer.register_forward_pre_hook(lambda _, inputs: tuple(x.clone() for x in inputs))


def adopt_vae(source: Path, work: Path, config: model.ToyConfig) -> None:
    """Put another demo-model file's VAE in ``work`` as the VAE and decoder phases' results. Its encoder defines
    the latent space and its decoder is already fine-tuned, so a UNet experiment skips both phases (30 min here).

    Stops naming the file when it is no demo-model file, or its VAE has other widths than this run's.
    """
    try:
        theirs, parts = model.read(source)
    except (OSError, ValueError) as error:
        raise SystemExit(f"--vae-from: {error}") from None
    if (theirs.vae_channels, theirs.vae_mult) != (config.vae_channels, config.vae_mult):
        raise SystemExit(f"--vae-from: {source}'s VAE has widths {theirs.vae_channels} x {theirs.vae_mult}, this "
                         f"run's {config.vae_channels} x {config.vae_mult}: give a file of this run's VAE widths, or "
                         "leave --vae-from out to train a VAE.")
    for name in ("vae.pt", "decoder.pt"):
        torch.save(parts["vae"], work / name)


def file_networks(path: Path, config: model.ToyConfig, clip, seed: int) -> dict[str, Any]:
    """A demo-model file's UNet and text encoder as a checkpoint ``train_unet`` starts from (each its own EMA).

    ``config`` may have more text layers than the file (``--text-layers``): the extra ones are appended as
    identities (``deepen_text``), so the fine-tune starts from exactly the file's model.
    """
    theirs, parts = model.read(path)
    unet = model.build_unet(config).diffusion_model
    unet.load_state_dict(parts["unet"])
    text = model.text_encoder(clip)
    text.transformer.load_state_dict(parts["clip"], strict=theirs.text_layers == config.text_layers)
    deepen_text(text, theirs.text_layers, seed)
    return {"unet": unet.state_dict(), "text": text.state_dict(),
            "ema_unet": unet.state_dict(), "ema_text": text.state_dict()}


def deepen_text(text: torch.nn.Module, kept: int, seed: int) -> None:
    """Make the text layers after the first ``kept`` identities: PyTorch's initialisation, then each residual
    branch's output projection zeroed. The final layer norm then sees what it saw, so a deeper encoder grafted
    onto a trained one changes nothing until training moves those projections off zero (their gradients are
    not zero, as their inputs are not)."""
    layers = text.transformer.text_model.encoder.layers
    for index in range(kept, len(layers)):
        initialise(layers[index], seed + index)
        with torch.no_grad():
            for projection in (layers[index].self_attn.out_proj, layers[index].mlp.fc2):
                projection.weight.zero_()
                projection.bias.zero_()


def resume(path: Path, state: dict[str, Any], parts: tuple[tuple[Any, str], ...]) -> None:
    """Load each part's state from a checkpoint, or stop naming the likely cause: a checkpoint of other widths."""
    for part, key in parts:
        try:
            part.load_state_dict(state[key])
        except (RuntimeError, ValueError) as error:
            raise SystemExit(f"{path} does not fit this run's networks ({str(error).splitlines()[0]}). It was "
                             "trained with other --unet-widths or --text-layers: give the same, or another "
                             "--work.") from None


@dataclasses.dataclass
class Training:
    """What one training cycle of a denoiser and its text encoder keeps: their EMA copies, the caption token rows
    trained in place of the embedding table, every (parameter, average) pair, AdamW on a one-cycle schedule."""

    ema: torch.nn.Module
    ema_text: torch.nn.Module
    rows: CaptionRows
    trained: list[tuple[torch.Tensor, torch.Tensor]]
    parameters: list[torch.nn.Parameter]
    optimiser: torch.optim.Optimizer
    schedule: Any

    @classmethod
    def start(cls, denoiser: torch.nn.Module, text: torch.nn.Module, token_ids: list[int], learning_rate: float,
              steps: int) -> Training:
        ema, ema_text = copy.deepcopy(denoiser).requires_grad_(False), copy.deepcopy(text).requires_grad_(False)
        rows = CaptionRows(text, ema_text, token_ids)
        trained = [(mine, average) for network, copied in ((denoiser, ema), (text.transformer, ema_text.transformer))
                   for mine, average in zip(network.parameters(), copied.parameters()) if mine.requires_grad]
        trained.append((rows.rows, rows.average))
        parameters = [mine for mine, _ in trained]
        optimiser = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, learning_rate, total_steps=steps, pct_start=0.03,
                                                       final_div_factor=10)
        return cls(ema, ema_text, rows, trained, parameters, optimiser, schedule)

    def resume(self, checkpoint: Path, networks: tuple[tuple[Any, str], ...]) -> int:
        """The first step to train: 1, or the one after ``checkpoint``'s, whose state is loaded."""
        if not checkpoint.exists():
            return 1
        state = torch.load(checkpoint, weights_only=False)
        resume(checkpoint, state, (*networks, (self.optimiser, "optimiser"), (self.schedule, "schedule")))
        print(f"[{checkpoint.stem}] resuming at step {state['step'] + 1}", flush=True)
        return state["step"] + 1


def train_unet(config: model.ToyConfig, data: dict[str, torch.Tensor], clip, steps: int, batch: int, seed: int,
               checkpoint: Path, snapshot: Callable[[torch.nn.Module, torch.nn.Module], None], bf16: bool,
               learning_rate: float = LEARNING_RATE, start_from: Path | None = None, blank_padding: float = 0.0
               ) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Eps-prediction on SD's schedule with offset noise, min-SNR-5 weighted, captions dropped 10 % of the time
    (for cfg), EMA. ``bf16`` runs the forward pass under CPU bf16 autocast (weights and optimiser stay fp32).

    One one-cycle learning-rate schedule over ``steps``; ``checkpoint`` (saved every 500 steps) resumes it.
    ``start_from``, another run's checkpoint, gives the networks and their EMA to start from (a second cycle
    with a fresh optimiser). ``snapshot`` gets the EMA networks every 1000 steps, so a usable model exists long
    before the end.

    ``blank_padding``: the share of captions whose text-encoder output from the end token on is replaced by the
    empty caption's. The encoder is causal, as CLIP is, so that padding sums up the whole caption, and a UNet may
    read the objects from it rather than from their words, whose maps the edits act on; blanked, the padding
    says nothing. An experiment (toy/MODEL.md): on the wide UNet, half blanked, a negative weight shrank the
    circle where it had not, but a large one still did not grow it.
    """
    base = model.build_unet(config)
    unet, text = base.diffusion_model, model.text_encoder(clip)
    initialise(unet, seed)
    initialise(text.transformer, seed + 1)
    with torch.no_grad():
        unet.out[-1].weight.zero_()
        unet.out[-1].bias.zero_()
    for network in (unet, text):
        network.train()
        network.requires_grad_(True)
    clone_norm_inputs(text)
    run = Training.start(unet, text, used_tokens(data["tokens"], token_ids(clip, "")), learning_rate, steps)
    ema_unet, ema_text, rows, trained, parameters = run.ema, run.ema_text, run.rows, run.trained, run.parameters
    optimiser, schedule = run.optimiser, run.schedule
    networks = ((unet, "unet"), (text, "text"), (ema_unet, "ema_unet"), (ema_text, "ema_text"))
    first = run.resume(checkpoint, networks)
    if first == 1 and start_from is not None:
        resume(start_from, torch.load(start_from, weights_only=False), networks)
    rows.read()
    alphas = 1 / (1 + base.model_sampling.sigmas.float() ** 2)
    empty = torch.tensor(token_ids(clip, ""))
    stream = batches(data, batch, seed + first)
    generator = torch.Generator().manual_seed(seed + first)
    start, running = time.time(), 0.0
    for step in range(first, steps + 1):
        latent, tokens = next(stream)
        drop = torch.rand(batch, generator=generator) < UNCONDITIONAL
        tokens = torch.where(drop[:, None], empty, tokens)
        blank = torch.rand(batch, generator=generator) < blank_padding if blank_padding else None
        t = torch.randint(0, len(alphas), (batch,), generator=generator)
        noise = torch.randn(latent.shape, generator=generator)
        noise += OFFSET_NOISE * torch.randn((batch, latent.shape[1], 1, 1), generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latent + (1 - a).sqrt() * noise
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if blank is None:
                context = text(tokens.tolist())[0]
            else:
                context = text([*tokens.tolist(), empty.tolist()])[0]
                padding = blank[:, None] & ((tokens == empty[1]).cumsum(1) > 0)  # from the end token on
                context = torch.where(padding[..., None], context[-1:], context[:-1])
            predicted = unet(noisy, timesteps=t.float(), context=context).float()
        snr = alphas[t] / (1 - alphas[t])
        weight = snr.clamp(max=5) / snr
        loss = (weight * (predicted - noise).pow(2).mean((1, 2, 3))).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimiser.step()
        schedule.step()
        average_into(trained, step)
        running = 0.99 * running + 0.01 * loss.item() if step > first else loss.item()
        if step % 100 == 0 or step == steps:
            progress(checkpoint.stem, step - first + 1, steps - first + 1, start, running)
        if step % 500 == 0 or step == steps:
            rows.write()  # the snapshots (every 1000 steps) and the networks returned read them there too
            state = {"step": step, "unet": unet.state_dict(), "text": text.state_dict(),
                     "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict(),
                     "optimiser": optimiser.state_dict(), "schedule": schedule.state_dict()}
            save_checkpoint(checkpoint, state)
        if step % 1000 == 0:
            snapshot(ema_unet, ema_text)
    rows.hook.remove()  # the CLIP is the caller's, and a second cycle trains it again
    return ema_unet.eval(), ema_text.eval()


@torch.no_grad()
def caption_accuracy(path: Path, samples: int, seed: int, steps: int = 20, cfg: float = 5.0,
                     load: Callable[[Path], tuple[Any, ...]] = model.load, scheduler: str = "normal"
                     ) -> dict[str, float]:
    """Sample ``samples`` seeded captions with ComfyUI's KSampler on the file ``load`` reads; the share each check
    passes."""
    import nodes

    unet, clip, vae, config = load(path)
    rng = np.random.default_rng(seed)
    captions = [scenes.random_scene(rng, backgrounds=scenes.MODEL_BACKGROUNDS).caption for _ in range(samples)]
    encoded = [clip.encode_from_tokens(clip.tokenize(c), return_pooled=True) for c in captions]
    empty, empty_pooled = clip.encode_from_tokens(clip.tokenize(""), return_pooled=True)
    positive = [[torch.cat([c for c, _ in encoded]), {"pooled_output": torch.cat([p for _, p in encoded])}]]
    negative = [[empty, {"pooled_output": empty_pooled}]]
    side = scenes.SIZE * config.scale // 8
    latent = {"samples": torch.zeros(samples, 4, side, side)}
    sampled = nodes.common_ksampler(unet, seed, steps, cfg, "euler", scheduler, positive, negative, latent)[0]
    images = (vae.decode(sampled["samples"]).clamp(0, 1) * 255).round().byte().numpy()
    checks = [measure.check(image, caption) for image, caption in zip(images, captions)]
    return {name: float(np.mean([getattr(c, name) for c in checks]))
            for name in ("ok", "count", "colours", "shapes", "background")}


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN's check: AVX512 and newer). Where it does not, autocast
    emulates bf16, and a training step of the narrow UNet (32-64-128) takes 11-15 s against 1.4 s in fp32 (an
    AVX2 EPYC)."""
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(supported is not None and supported())


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``, so a typo fails at once with the flag's name,
    not an hour later inside the learning-rate schedule."""

    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least {minimum}")
        return int(text)

    return parse


def share(text: str) -> float:
    """An argparse type: a share from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share from 0 to 1, like 0.5")
    return value


def widths(text: str) -> tuple[int, ...]:
    """An argparse type: the UNet's channels at its three levels (16x16, 8x8, 4x4 latents), e.g. ``32,64,128``.
    Each a multiple of 32 (its GroupNorms have 32 groups) and of the first (ComfyUI's UNet counts levels in
    multiples of its first width)."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or any(v <= 0 or v % 32 or v % values[0] for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not three widths like 32,64,128: whole multiples of 32 and "
                                         "of the first width, comma-separated")
    return values


def weights(text: str) -> tuple[float, ...]:
    """An argparse type: three non-negative weights for scenes of 1, 2 and 3 objects, not all zero."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != scenes.MAX_OBJECTS or not all(0 <= v < math.inf for v in values) or not sum(values) > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not {scenes.MAX_OBJECTS} weights like 1,2,3 for scenes of 1, 2 "
                                         "and 3 objects: non-negative numbers, comma-separated, not all zero")
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for resumable intermediate results")
    shipped = Path(__file__).with_name("prompt_to_prompt_toy.safetensors")
    parser.add_argument("--output", type=Path,
                        help=f"the model file to write (default: {shipped}; with --finetune, one in --work, so "
                             "that fine-tuning the shipped file does not overwrite it)")
    parser.add_argument("--comfyui", help="ComfyUI folder (default: COMFYUI_PATH)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=at_least(1), default=1500)
    parser.add_argument("--scenes", type=at_least(1), default=12000)
    parser.add_argument("--unet-steps", type=at_least(1), default=8000)
    parser.add_argument("--second-steps", type=at_least(0), default=8000,
                        help="steps of the second cycle (0: none), on twice the scenes at half the learning rate")
    parser.add_argument("--decoder-steps", type=at_least(1), default=1200)
    parser.add_argument("--batch", type=at_least(1), default=32)
    default = model.ToyConfig()
    parser.add_argument("--unet-widths", type=widths,
                        help="the UNet's channels at the 16x16, 8x8 and 4x4 latent levels (default "
                             f"{','.join(str(default.unet_channels * m) for m in default.unet_mult)})")
    parser.add_argument("--text-layers", type=at_least(1),
                        help=f"the text encoder's layers (default {default.text_layers}; with --finetune, at least the "
                             "file's: the layers added start as identities, so the fine-tune starts from its model)")
    parser.add_argument("--counts", type=weights,
                        help="how often scenes of 1, 2 and 3 objects are trained on, e.g. 1,2,3 (default: evenly)")
    parser.add_argument("--background-first", action="store_true",
                        help="name the background first in every second training caption ('on a white background, "
                             "a big red circle'), so that the background word's attention map lies around the "
                             "objects")
    parser.add_argument("--blank-padding", type=share, default=0.0,
                        help="the share of training captions (0-1) whose padding, from the end token on, is "
                             "replaced by the empty caption's, so that the UNet reads each object from its own words "
                             "(default 0; toy/MODEL.md says what it did)")
    parser.add_argument("--vae-from", type=Path,
                        help="a demo-model file whose VAE this run uses instead of training one (skips the VAE and "
                             "decoder phases; for a --work that has no VAE yet)")
    parser.add_argument("--finetune", type=Path,
                        help="a demo-model file to train on from where it stopped: its VAE, then one cycle of "
                             f"--unet-steps at a peak learning rate of {FINETUNE_LEARNING_RATE:g} on --scenes new "
                             "scenes (with --counts, say), with no second cycle")
    parser.add_argument("--phase", choices=("all", "decoder"), default="all",
                        help="'decoder': only fine-tune the decoder (it needs only the VAE, so it can run beside "
                             "the UNet's training)")
    parser.add_argument("--fp32", action="store_true",
                        help="train the UNet in fp32 (default: bf16 autocast where the CPU computes bf16 natively, "
                             "1.3x faster with AVX512-BF16; fp32 where it does not)")
    parser.add_argument("--evaluate", type=at_least(1), default=100, help="captions sampled to measure accuracy")
    args = parser.parse_args(argv)
    config = model.ToyConfig(**({} if args.unet_widths is None else {
        "unet_channels": args.unet_widths[0], "unet_mult": tuple(w // args.unet_widths[0] for w in args.unet_widths)}))
    if args.finetune is not None:
        if args.vae_from is not None or args.unet_widths is not None:
            parser.error("--finetune takes the file's VAE and widths: leave out --vae-from and --unet-widths")
        try:
            config = model.read(args.finetune)[0]
        except (OSError, ValueError) as error:
            parser.error(f"--finetune: {error}")
        if args.text_layers is not None and args.text_layers < config.text_layers:
            parser.error(f"--text-layers {args.text_layers}: {args.finetune} has {config.text_layers} text layers, "
                         "and a fine-tune can add layers, not drop them")
        args.vae_from = args.finetune
    if args.text_layers is not None:
        config = dataclasses.replace(config, text_layers=args.text_layers)
    if args.output is None:
        args.output = shipped if args.finetune is None else args.work / shipped.name
    elif args.finetune is not None and args.output.resolve() == args.finetune.resolve():
        parser.error("--output is the file --finetune starts from: give another --output, or leave it out to "
                     "write into --work")
    use_comfyui(args.comfyui)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    began = time.time()

    vae_file = args.work / "vae.pt"
    if args.vae_from is not None:
        if vae_file.exists():
            print(f"[vae] {args.work} has a VAE already: resuming with it, not --vae-from's", flush=True)
        else:
            adopt_vae(args.vae_from, args.work, config)
    autoencoder = model.build_autoencoder(config)
    if vae_file.exists():
        autoencoder.load_state_dict(torch.load(vae_file))
        scaled = f"{vae_file}, rescaled when it was trained"
    else:
        autoencoder, factor = train_vae(config, args.vae_steps, args.seed)
        torch.save(autoencoder.state_dict(), vae_file)
        scaled = f"latent rescaled by {factor:.3f}"
    autoencoder.eval()
    psnr = vae_psnr(autoencoder, args.seed + 2)
    print(f"[vae] PSNR {psnr:.1f} dB on 200 new scenes ({scaled})", flush=True)
    decoder_file = args.work / "decoder.pt"
    if args.phase == "decoder" or not decoder_file.exists():
        tuned = finetune_decoder(autoencoder, args.decoder_steps, args.seed + 6)
        torch.save(tuned.state_dict(), decoder_file)
        print(f"[decoder] PSNR {vae_psnr(tuned, args.seed + 2):.1f} dB on the same scenes", flush=True)
        if args.phase == "decoder":
            return

    clip = model.build_clip(config)

    def scenes_file(name: str, count: int, seed: int) -> dict[str, torch.Tensor]:
        path = args.work / name
        if path.exists():
            print(f"[encode] {path} exists: training on its scenes as they were encoded (--counts and "
                  "--background-first shape new scene files only)", flush=True)
        else:
            torch.save(encode_scenes(autoencoder, {"tokens": lambda c: token_ids(clip, c)}, count, seed, args.counts,
                                    args.background_first), path)
        return torch.load(path)

    if args.finetune is None:
        data = scenes_file("scenes.pt", args.scenes, args.seed + 3)
    else:
        data = scenes_file("finetune_scenes.pt", args.scenes, args.seed + 11)
    used = used_tokens(data["tokens"], token_ids(clip, ""))

    autoencoder.load_state_dict(torch.load(decoder_file))

    def snapshot(unet: torch.nn.Module, text: torch.nn.Module) -> None:
        model.save(args.output, config, unet, text, autoencoder, used)

    bf16 = not args.fp32 and native_bf16()
    print(f"[unet] {'bf16 autocast' if bf16 else 'fp32'}" + ("" if bf16 or args.fp32 else
          ": this CPU has no native bf16, and emulated it is 8-10x slower than fp32"), flush=True)
    if args.finetune is not None:
        start = args.work / "start.pt"
        if not start.exists():
            torch.save(file_networks(args.finetune, config, clip, args.seed + 13), start)
        snapshot(*train_unet(config, data, clip, args.unet_steps, args.batch, args.seed + 12,
                             args.work / "finetune.pt", snapshot, bf16, FINETUNE_LEARNING_RATE, start,
                             args.blank_padding))
    else:
        first = args.work / "unet.pt"
        snapshot(*train_unet(config, data, clip, args.unet_steps, args.batch, args.seed + 4, first, snapshot, bf16,
                             blank_padding=args.blank_padding))
        if args.second_steps:
            more = scenes_file("scenes2.pt", args.scenes, args.seed + 7)
            data = {key: torch.cat([data[key], more[key]]) for key in data}
            snapshot(*train_unet(config, data, clip, args.second_steps, args.batch, args.seed + 8,
                                 args.work / "unet2.pt", snapshot, bf16, SECOND_LEARNING_RATE, first,
                                 args.blank_padding))
    size = args.output.stat().st_size / 2 ** 20
    print(f"wrote {args.output} ({size:.1f} MiB) after {(time.time() - began) / 60:.1f} min", flush=True)
    scores = caption_accuracy(args.output, args.evaluate, args.seed + 5)
    print(f"[evaluate] {args.evaluate} captions: " + ", ".join(f"{k} {v:.0%}" for k, v in scores.items()),
          flush=True)


if __name__ == "__main__":
    main()
