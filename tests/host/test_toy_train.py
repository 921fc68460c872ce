"""The training command's arguments: a bad count, width, scene mix or share stops it at once, naming the flag
(training takes hours), a checkpoint of other widths is refused by name, --vae-from takes a demo-model file's VAE,
--finetune starts from exactly the file's model (with --text-layers, its added layers as identities), and
--blank-padding gives the UNet the empty caption's padding."""

import dataclasses

import numpy as np
import pack
import pytest
import torch
from toy_files import CAPTIONS, narrow_flux_config, random_flux_file

train = pack.module("toy.train")


@pytest.mark.parametrize("flag, value, says", [
    *[(flag, value, "whole number of at least") for flag, value in
      (("--second-steps", "-1"), ("--unet-steps", "0"), ("--batch", "x"))],
    *[("--unet-widths", value, "multiples of 32") for value in
      ("48,96,192", "64,96,128", "32,64", "32,64,128,256", "32,x", "")],
    ("--counts", "1,2", "weights like 1,2,3"), ("--counts", "0,0,0", "not all zero"),
    ("--counts", "1,-1,1", "non-negative"), ("--counts", "1,inf,1", "non-negative"), ("--counts", "x", "1,2,3"),
    *[("--blank-padding", value, "share from 0 to 1") for value in ("1.5", "-0.1", "x", "nan")]])
def test_a_bad_argument_stops_training_before_it_starts_naming_its_flag(flag, value, says, tmp_path, capsys):
    """A bad count, UNet width, scene mix or share: training takes hours, so it must stop before anything."""
    with pytest.raises(SystemExit) as stop:
        train.main(["--work", str(tmp_path), flag, value])
    assert stop.value.code == 2
    message = capsys.readouterr().err
    assert flag in message and says in message, message
    assert not list(tmp_path.iterdir()), "nothing may be trained or written"


@pytest.mark.parametrize("value", ["3", "0,3", "3,x", "3,3,3", ""])
def test_bad_block_counts_stop_the_joint_attention_training_before_it_starts(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        pack.module("toy.flux_train").main(["--work", str(tmp_path), "--blocks", value])
    assert stop.value.code == 2 and "--blocks" in capsys.readouterr().err
    assert not list(tmp_path.iterdir()), "nothing may be trained or written"


@pytest.mark.parametrize("flag, value", [("--binding-weight", v) for v in ("-0.1", "x", "inf", "nan")] + [
    ("--scale", v) for v in ("0", "2.5")])
def test_a_bad_binding_weight_or_scale_stops_the_joint_attention_training_naming_its_flag(flag, value, tmp_path,
                                                                                          capsys):
    with pytest.raises(SystemExit) as stop:
        pack.module("toy.flux_train").main(["--work", str(tmp_path), flag, value])
    assert stop.value.code == 2 and flag in capsys.readouterr().err
    assert not list(tmp_path.iterdir()), "nothing may be trained or written"


def test_block_counts_read_as_double_and_single():
    assert pack.module("toy.flux_train").block_counts("2,5") == (2, 5)


@pytest.mark.parametrize("blank_padding, bf16", [(0.0, False), (1.0, False), (0.0, True), (1.0, True)])
def test_blank_padding_gives_the_unet_the_empty_captions_padding_and_keeps_the_words(blank_padding, bf16, tmp_path,
                                                                                     monkeypatch):
    """The UNet's context in a training step: blanked, every caption's padding (from the end token on) is the same,
    the empty caption's, while its words still differ; not blanked, a causal encoder's padding sums up each
    caption and differs too. Also under the bf16 autocast that training uses where the CPU computes bf16."""
    model = pack.module("toy.model")
    config, contexts = model.ToyConfig(), []
    build = model.build_unet

    def watched(config):
        base = build(config)
        base.diffusion_model.register_forward_pre_hook(
            lambda _, args, kwargs: contexts.append(kwargs["context"].detach()), with_kwargs=True)
        return base

    monkeypatch.setattr(train.model, "build_unet", watched)
    monkeypatch.setattr(train, "UNCONDITIONAL", 0.0)
    clip = model.build_clip(config)
    captions = ["a big red circle on a white background", "a small blue square and a big green triangle"]
    data = {"mean": torch.zeros(2, 4, 16, 16), "std": torch.zeros(2, 4, 16, 16),
            "tokens": torch.tensor([train.token_ids(clip, c) for c in captions])}
    train.train_unet(config, data, clip, 1, 8, 0, tmp_path / "unet.pt", lambda *_: None, bf16,
                     blank_padding=blank_padding)
    (context,) = contexts
    words, padding = context[:, 1:8], context[:, 16:]  # both captions end before token 16
    assert not torch.equal(words.amin(0), words.amax(0)), "the two captions' words must differ"
    assert torch.equal(padding.amin(0), padding.amax(0)) == (blank_padding == 1.0), blank_padding


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_training_moves_the_captions_token_rows_in_the_tables_files_keep_and_no_other_row(bf16, tmp_path):
    """Training reads the captions' token rows through a hook (CaptionRows), not CLIP's whole table: their updates
    must reach the tables that checkpoints and files keep (the network's and its EMA's), every other row stays
    as initialised, and the caller's CLIP is left without the hook. Also under training's bf16 autocast."""
    model = pack.module("toy.model")
    config = model.ToyConfig()
    clip = model.build_clip(config)
    captions = ["a big red circle on a white background", "a small blue square and a big green triangle"]
    data = {"mean": torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)),
            "std": torch.zeros(2, 4, 16, 16), "tokens": torch.tensor([train.token_ids(clip, c) for c in captions])}
    fresh = model.text_encoder(model.build_clip(config))
    train.initialise(fresh.transformer, 1)  # what train_unet starts the text encoder from at seed 0
    key = "transformer.text_model.embeddings.token_embedding.weight"
    initial = fresh.state_dict()[key]
    _, ema_text = train.train_unet(config, data, clip, 2, 8, 0, tmp_path / "unet.pt", lambda *_: None, bf16)
    used = torch.tensor(train.used_tokens(data["tokens"], train.token_ids(clip, "")))
    unused = torch.ones(len(initial), dtype=torch.bool)
    unused[used] = False
    tables = {"EMA": ema_text.state_dict()[key], "checkpoint": torch.load(tmp_path / "unet.pt")["text"][key]}
    for name, table in tables.items():
        assert (table[used] != initial[used]).any(1).all(), f"{name}: every caption token's row must have moved"
        assert torch.equal(table[unused], initial[unused]), f"{name}: rows no caption uses must stay"
    assert not model.text_encoder(clip).transformer.get_input_embeddings()._forward_hooks


@pytest.mark.parametrize("counts, objects", [((0, 0, 1), {3}), ((1, 0, 0), {1}), ((0, 2, 1), {2, 3})])
def test_counts_weigh_the_scenes_by_their_number_of_objects(counts, objects):
    scenes = pack.module("toy.scenes")
    _, captions = train.scene_batch(np.random.default_rng(0), 60, counts=counts)
    assert {len(scenes.parse_caption(c).things) for c in captions} == objects


def test_background_first_names_the_background_first_in_every_second_caption_of_the_same_scenes():
    scenes = pack.module("toy.scenes")
    pixels, captions = train.scene_batch(np.random.default_rng(0), 8, counts=(1, 2, 3))
    mixed_pixels, mixed = train.scene_batch(np.random.default_rng(0), 8, counts=(1, 2, 3), background_first=True)
    assert torch.equal(mixed_pixels, pixels)
    assert mixed[0::2] == captions[0::2]
    assert all(c.startswith("on a ") and not c.endswith(" background") for c in mixed[1::2]), mixed
    assert [scenes.parse_caption(c) for c in mixed] == [scenes.parse_caption(c) for c in captions]


def test_a_checkpoint_of_other_widths_is_refused_naming_the_flag(tmp_path):
    model = pack.module("toy.model")
    narrow = model.build_unet(model.ToyConfig()).diffusion_model
    wide = model.build_unet(model.ToyConfig(unet_channels=64, unet_mult=(1, 1, 2))).diffusion_model
    path = tmp_path / "unet.pt"
    with pytest.raises(SystemExit, match="--unet-widths") as stop:
        train.resume(path, {"unet": narrow.state_dict()}, ((wide, "unet"),))
    assert str(path) in str(stop.value)


def test_vae_from_the_shipped_model_stands_for_the_vae_and_decoder_phases(tmp_path):
    """Both phases' results are the file's VAE: the autoencoder training builds loads it and decodes as the file's."""
    model = pack.module("toy.model")
    shipped = pack.module("nodes.toy_nodes").MODEL_FILE
    train.adopt_vae(shipped, tmp_path, model.ToyConfig())
    _, parts = model.read(shipped)
    for name in ("vae.pt", "decoder.pt"):
        autoencoder = model.build_autoencoder(model.ToyConfig())
        autoencoder.load_state_dict(torch.load(tmp_path / name))
        assert all(torch.equal(value, parts["vae"][key]) for key, value in autoencoder.state_dict().items()), name


@pytest.mark.parametrize("content", [b"not a safetensors file", None], ids=["junk", "missing"])
def test_vae_from_a_file_that_is_no_demo_model_stops_naming_it(content, tmp_path):
    path = tmp_path / "other.safetensors"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SystemExit, match="--vae-from") as stop:
        train.adopt_vae(path, tmp_path, pack.module("toy.model").ToyConfig())
    assert str(path) in str(stop.value)
    assert not (tmp_path / "vae.pt").exists()


def test_vae_from_a_file_with_other_vae_widths_is_refused(tmp_path):
    model = pack.module("toy.model")
    shipped = pack.module("nodes.toy_nodes").MODEL_FILE
    with pytest.raises(SystemExit, match="widths"):
        train.adopt_vae(shipped, tmp_path, model.ToyConfig(vae_channels=64))


class Stop(Exception):
    pass


@pytest.mark.parametrize("native, flags, expected", [(True, [], True), (False, [], False), (True, ["--fp32"], False)])
def test_the_unet_trains_in_bf16_only_where_the_cpu_computes_it_natively(native, flags, expected, tmp_path,
                                                                          monkeypatch, capsys):
    """Emulated bf16 made a step 8-10x slower than fp32 on an AVX2 CPU: there the default is fp32."""
    chosen = []

    def record(*args, **kwargs):
        chosen.append(args[8])
        raise Stop

    monkeypatch.setattr(train, "native_bf16", lambda: native)
    monkeypatch.setattr(train, "train_unet", record)
    monkeypatch.setattr(train, "vae_psnr", lambda *args: 0.0)
    shipped = pack.module("nodes.toy_nodes").MODEL_FILE
    with pytest.raises(Stop):
        train.main(["--work", str(tmp_path), "--vae-from", str(shipped), "--scenes", "1", *flags])
    assert chosen == [expected]
    assert ("no native bf16" in capsys.readouterr().out) == (not native and not flags)


@pytest.mark.parametrize("extra, says", [(["--vae-from", "x.safetensors"], "leave out --vae-from"),
                                         (["--unet-widths", "64,64,128"], "leave out --vae-from and --unet-widths")])
def test_finetune_takes_the_files_vae_and_widths_and_refuses_others(extra, says, tmp_path, capsys):
    shipped = pack.module("nodes.toy_nodes").MODEL_FILE
    with pytest.raises(SystemExit) as stop:
        train.main(["--work", str(tmp_path), "--finetune", str(shipped), *extra])
    assert stop.value.code == 2 and says in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_finetune_refuses_to_write_over_the_file_it_starts_from(tmp_path, capsys):
    shipped = pack.module("nodes.toy_nodes").MODEL_FILE
    with pytest.raises(SystemExit) as stop:
        train.main(["--work", str(tmp_path), "--finetune", str(shipped), "--output", str(shipped)])
    assert stop.value.code == 2 and "--output is the file --finetune starts from" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_finetune_of_a_file_that_is_no_demo_model_stops_naming_it(tmp_path, capsys):
    path = tmp_path / "other.safetensors"
    path.write_bytes(b"junk")
    with pytest.raises(SystemExit) as stop:
        train.main(["--work", str(tmp_path / "work"), "--finetune", str(path)])
    assert stop.value.code == 2 and f"--finetune: {path}" in capsys.readouterr().err


def test_finetune_starts_from_the_files_networks_at_its_learning_rate_and_writes_into_work(tmp_path, monkeypatch):
    model = pack.module("toy.model")
    shipped = pack.module("nodes.toy_nodes").MODEL_FILE
    started, saved = [], []

    def record(config, data, clip, steps, batch, seed, checkpoint, snapshot, bf16, learning_rate, start_from,
               blank_padding):
        assert blank_padding == 0.25
        started.append((checkpoint.name, steps, learning_rate, torch.load(start_from, weights_only=False)))
        snapshot(None, None)
        raise Stop

    monkeypatch.setattr(train, "train_unet", record)
    monkeypatch.setattr(train.model, "save", lambda path, *args: saved.append(path))
    monkeypatch.setattr(train, "vae_psnr", lambda *args: 0.0)
    with pytest.raises(Stop):
        train.main(["--work", str(tmp_path), "--finetune", str(shipped), "--scenes", "1", "--unet-steps", "7",
                    "--blank-padding", "0.25"])
    (name, steps, learning_rate, state), = started
    assert (name, steps, learning_rate) == ("finetune.pt", 7, train.FINETUNE_LEARNING_RATE)
    assert saved == [tmp_path / shipped.name], "a fine-tune writes into --work, never over the file it starts from"
    _, parts = model.read(shipped)
    for key in ("unet", "ema_unet"):
        assert all(torch.equal(state[key][k], v) for k, v in parts["unet"].items()), key
    text = {k.removeprefix("transformer."): v for k, v in state["text"].items() if k.startswith("transformer.")}
    assert all(torch.equal(text[k], v) for k, v in parts["clip"].items())


def test_finetune_with_more_text_layers_starts_from_exactly_the_files_text_encoder():
    """The layers --text-layers adds start as identities: the deeper encoder gives the file's embeddings."""
    model = pack.module("toy.model")
    shipped = pack.module("nodes.toy_nodes").MODEL_FILE
    config, _ = model.read(shipped)
    config = dataclasses.replace(config, text_layers=config.text_layers + 2)
    deeper = model.build_clip(config)
    train.file_networks(shipped, config, deeper, 0)
    _, clip, _, _ = model.load(shipped)
    caption = "a big red circle and a small blue square on a white background"
    added = model.text_encoder(deeper).transformer.text_model.encoder.layers[-1]
    assert added.self_attn.q_proj.weight.abs().sum() > 0, "the added layers are initialised, only their outputs zero"
    torch.testing.assert_close(deeper.encode_from_tokens(deeper.tokenize(caption)),
                               clip.encode_from_tokens(clip.tokenize(caption)))


def test_finetune_refuses_fewer_text_layers_than_the_file_has(tmp_path, capsys):
    shipped = pack.module("nodes.toy_nodes").MODEL_FILE
    with pytest.raises(SystemExit) as stop:
        train.main(["--work", str(tmp_path), "--finetune", str(shipped), "--text-layers", "2"])
    assert stop.value.code == 2 and "can add layers, not drop them" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def narrow_flux_data(clip) -> dict[str, torch.Tensor]:
    """Two encoded scenes (random latents) with their captions' T5 tokens, as flux_train's scenes file holds them."""
    tokens = torch.tensor([pack.module("toy.flux_train").t5_ids(clip, c) for c in CAPTIONS])
    width = pack.module("toy.model").ToyConfig().text_width
    return {"mean": torch.randn(2, 4, 16, 16), "std": torch.zeros(2, 4, 16, 16), "t5": tokens,
            "pooled": torch.zeros(2, width).half(), "empty_pooled": torch.zeros(1, width)}


def test_a_second_cycle_starts_from_exactly_the_networks_of_a_file_the_run_wrote(tmp_path):
    """A run's file travels where its checkpoint does not (to a new machine): a second cycle from it starts from
    its networks, each its own EMA (to the file's fp16), with its widths and VAE."""
    flux_model, flux_train = pack.module("toy.flux_model"), pack.module("toy.flux_train")
    config = narrow_flux_config()
    written = random_flux_file(tmp_path / "flux.safetensors", config)
    read, vae = flux_train.file_start(written.path, tmp_path / "start.pt")
    assert read.to_json() == config.to_json()
    assert all(torch.equal(vae[k], v.half().float()) for k, v in written.autoencoder.state_dict().items())
    second = tmp_path / "second.pt"  # at rate 0 the cycle keeps what it started from
    clip = flux_model.build_clip(read)
    flux_train.train_flux(read, narrow_flux_data(clip), clip, 1, 2, 0, second, lambda *_: None, False, 0.0,
                          start_from=tmp_path / "start.pt")
    state = torch.load(second, weights_only=False)
    for key in ("dit", "ema_dit"):
        assert all(torch.equal(state[key][k], v.half().float()) for k, v in written.dit.state_dict().items()), key
    rows = written.t5_rows
    table = written.t5.transformer.get_input_embeddings().weight[rows].half().float()
    for key in ("t5", "ema_t5"):
        assert torch.equal(state[key]["transformer.shared.weight"][rows], table), key


def test_the_joint_attention_model_trains_resumes_and_loads_as_comfyuis_flux(tmp_path, monkeypatch):
    """A few steps of toy/flux_train.py on a narrow config: the checkpoint resumes, and the written file loads as
    ComfyUI's own Flux (the pack edits it as Flux) and samples with the stock KSampler; the Demo Model node offers
    it beside the UNet model and loads it."""
    import nodes

    model, flux_model, flux_train = (pack.module(f"toy.{name}") for name in ("model", "flux_model", "flux_train"))
    unet_config = model.ToyConfig()
    config = narrow_flux_config()
    clip = flux_model.build_clip(config)
    clip_l, _ = flux_model.encoders(clip)
    train.initialise(clip_l.transformer, 0)
    data = narrow_flux_data(clip)
    tokens = data["t5"]
    checkpoint = tmp_path / "flux.pt"
    flux_train.train_flux(config, data, clip, 2, 2, 0, checkpoint, lambda *_: None, False, adaln_zero=True)
    assert torch.load(checkpoint, weights_only=False)["step"] == 2
    assert "head" in torch.load(tmp_path / "flux_binding.pt")  # the binding loss's head resumes with the run
    dit, t5 = flux_train.train_flux(config, data, clip, 2, 2, 0, checkpoint, lambda *_: None, False)  # resumed: done
    head = torch.load(tmp_path / "flux_binding.pt")
    head["head"]["weight"].fill_(0.5)  # a head no initialisation draws
    torch.save(head, tmp_path / "flux_binding.pt")
    second = tmp_path / "second.pt"  # a second cycle starts from the first's networks (at rate 0 it keeps them)
    flux_train.train_flux(config, data, clip, 1, 2, 0, second, lambda *_: None, False, 0.0, start_from=checkpoint)
    first_state, second_state = (torch.load(p, weights_only=False)["dit"] for p in (checkpoint, second))
    assert all(torch.equal(first_state[k], second_state[k]) for k in first_state)
    second_head = torch.load(tmp_path / "second_binding.pt")["head"]["weight"]
    assert (second_head - 0.5).abs().max() < 2e-3  # and the first's binding head: one step of its AdamW on
    autoencoder = model.build_autoencoder(unet_config)
    train.initialise(autoencoder, 0)
    path = tmp_path / "flux.safetensors"
    flux_model.save(path, config, dit, clip_l, t5, autoencoder.state_dict(), [49406, 49407], tokens.flatten().tolist())
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:  # a Flux checkpoint's keys, which every ComfyUI reads
        assert "dit.double_blocks.0.img_attn.norm.query_norm.scale" in set(handle.keys())
    patcher, loaded_clip, vae, read = flux_model.load(path)
    assert read.to_json() == config.to_json() and type(patcher.model).__name__ == "Flux"
    assert flux_model.is_joint_model(path) and not flux_model.is_joint_model(pack.module("nodes.toy_nodes").MODEL_FILE)
    assert pack.module("runtime.families").family(patcher).name == "Flux"
    encoded, pooled = loaded_clip.encode_from_tokens(loaded_clip.tokenize(CAPTIONS[0]), return_pooled=True)
    assert encoded.shape == (1, config.text_length, config.t5_width)
    positive = [[encoded, {"pooled_output": pooled}]]
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    sampled = nodes.common_ksampler(patcher, 0, 2, 1.0, "euler", "simple", positive, positive, latent)[0]["samples"]
    assert torch.isfinite(vae.decode(sampled)).all()
    toy_nodes = pack.module("nodes.toy_nodes")
    monkeypatch.setitem(toy_nodes.DEMO_MODELS, "flux", (path, flux_model.load))
    assert toy_nodes.DemoModelLoader.INPUT_TYPES()["optional"]["model"][0] == ["unet", "flux"]
    demo, _, _ = toy_nodes.DemoModelLoader().load("flux")
    assert type(demo.model).__name__ == "Flux"


def test_initialise_starts_every_norm_of_comfyuis_classes_at_one_so_attention_can_learn():
    """Flux's QK norms and T5's norms are ComfyUI's RMSNorm classes: left at zero, a query's and a key's scales are
    each other's only gradient, and every attention of the trained model stays uniform (toy/MODEL.md)."""
    flux_model = pack.module("toy.flux_model")
    config = narrow_flux_config()
    dit = flux_model.build_dit(config).diffusion_model
    _, t5 = flux_model.encoders(flux_model.build_clip(config))
    norms = {}
    for network in (dit, t5.transformer):
        train.initialise(network, 0)
        norms |= {f"{type(network).__name__}.{name}": param for name, param in network.named_parameters()
                  if "norm" in name and param.dim() == 1 and not name.endswith("bias")}
    assert any("query_norm" in name for name in norms) and any("layer_norm" in name for name in norms)
    assert {name for name, param in norms.items() if not torch.equal(param, torch.ones_like(param))} == set()


@pytest.mark.parametrize("content", [b"not a safetensors file", None], ids=["junk", "missing"])
@pytest.mark.parametrize("command, fix", [(("toy.evaluate",), ""),
                                          (("toy.flux_train", "--second-cycle"), "toy.flux_train wrote")],
                         ids=["evaluate", "second_cycle"])
def test_evaluating_or_training_on_from_a_file_that_is_no_model_stops_naming_it(command, fix, content, tmp_path,
                                                                                  capsys):
    path = tmp_path / "other.safetensors"
    if content is not None:
        path.write_bytes(content)
    module, *flags = command
    arguments = ["--work", str(tmp_path / "work"), *flags] if flags else []
    with pytest.raises(SystemExit) as stop:
        pack.module(module).main([*arguments, str(path)])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and str(path) in error and fix in error, error


def test_evaluate_samples_a_joint_attention_file_with_the_shift_asked_and_refuses_one_for_a_unet_file(tmp_path,
                                                                                                      capsys):
    evaluate = pack.module("toy.evaluate")
    path = random_flux_file(tmp_path / "flux.safetensors", narrow_flux_config()).path
    own = pack.module("toy.flux_model").load(path)[0].get_model_object("model_sampling")
    shifted = evaluate._shifted(2.0, path)[0].get_model_object("model_sampling")
    assert own.shift == 1.0 and shifted.shift == 2.0
    assert float(shifted.sigma(torch.tensor(0.5))) > float(own.sigma(torch.tensor(0.5))) + 0.1  # nearer the noise
    unet_file = pack.module("nodes.toy_nodes").MODEL_FILE
    with pytest.raises(SystemExit) as stop:
        evaluate.main([str(unet_file), "--shift", "2"])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and "--shift" in error and str(unet_file) in error, error


@pytest.mark.parametrize("flag, value", [("--cfg", "-1"), ("--cfg", "nan"), ("--shift", "inf"), ("--shift", "one")])
def test_evaluate_stops_at_a_guidance_or_shift_that_is_no_finite_number_naming_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit) as stop:
        pack.module("toy.evaluate").main([str(pack.module("nodes.toy_nodes").MODEL_FILE), flag, value])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and flag in error and "finite number" in error, error


def test_binding_targets_give_each_word_of_an_object_all_its_attributes_and_place_and_no_other_word_any():
    """The binding loss asks the T5 to read an object's size, colour and shape, and which of the caption's objects
    it is, from each of its three words, so an image token that attends to any of them learns what the whole
    object is and where it goes (toy/MODEL.md)."""
    flux_model, flux_train = pack.module("toy.flux_model"), pack.module("toy.flux_train")
    clip = flux_model.build_clip(narrow_flux_config())
    caption = "a small green triangle, a big red circle and a small blue square on a black background"
    ids = flux_train.t5_ids(clip, caption)
    targets = flux_train.binding_targets(clip, torch.tensor([ids]))[0]
    expected = torch.full_like(targets, -100)
    for place, words in enumerate((("small", "green", "triangle"), ("big", "red", "circle"),
                                   ("small", "blue", "square"))):
        start = ids.index(flux_train.t5_ids(clip, words[1])[0]) - 1
        attributes = [values.index(word) for word, (_, values) in zip(words, flux_train.ATTRIBUTES)]
        expected[start:start + 3] = torch.tensor([*attributes, place])
    assert torch.equal(targets, expected)
