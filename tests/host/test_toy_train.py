"""The training command's arguments: a bad count or width stops it at once, naming the flag (training takes
hours), and a checkpoint of other widths is refused by name."""

import pack
import pytest

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
