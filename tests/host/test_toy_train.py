"""The training command's arguments: a bad count or width stops it at once, naming the flag (training takes
hours), a checkpoint of other widths is refused by name, and --vae-from takes a demo-model file's VAE."""

import pack
import pytest
import torch

train = pack.module("toy.train")


@pytest.mark.parametrize("flag, value", [("--second-steps", "-1"), ("--unet-steps", "0"), ("--batch", "x")])
def test_a_bad_count_stops_training_before_it_starts(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train.main(["--work", str(tmp_path), flag, value])
    assert stop.value.code == 2
    message = capsys.readouterr().err
    assert flag in message and "whole number of at least" in message, message
    assert not list(tmp_path.iterdir()), "nothing may be trained or written"


@pytest.mark.parametrize("value", ["48,96,192", "64,96,128", "32,64", "32,64,128,256", "32,x", ""])
def test_widths_that_the_unet_cannot_take_stop_training_before_it_starts(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train.main(["--work", str(tmp_path), "--unet-widths", value])
    assert stop.value.code == 2
    message = capsys.readouterr().err
    assert "--unet-widths" in message and "multiples of 32" in message, message
    assert not list(tmp_path.iterdir()), "nothing may be trained or written"


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
