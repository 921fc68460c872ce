"""The training command's arguments: a bad count stops it at once, naming the flag (training takes hours)."""

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
