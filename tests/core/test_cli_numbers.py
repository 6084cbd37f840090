"""Negative / zero / non-finite numeric CLI options: one clear line and exit 2, never accepted (issue 15)."""

from __future__ import annotations

import argparse

import pytest

from radfm.argtypes import non_negative_float, non_negative_int, port, positive_float, positive_int
from radfm.cli import main


@pytest.mark.parametrize("argv,option", [
    (["register", "f.nii", "m.nii", "--instance-steps", "-5"], "--instance-steps"),
    (["check", "x.nii", "--series", "-1"], "--series"),
    (["segment", "x.nii", "--point", "1,2,3", "--series", "-1"], "--series"),
    (["demo", "--seed", "-3"], "--seed"),
    (["serve", "--port", "0"], "--port"),
    (["serve", "--max-upload-mb", "0"], "--max-upload-mb"),
    (["serve", "--timeout-s", "-1"], "--timeout-s"),
    (["serve", "--session-ttl-s", "nan"], "--session-ttl-s"),
    (["report", "--threads", "0"], "--threads"),
    (["report", "--max-new-tokens", "-1", "--findings", "x"], "--max-new-tokens"),
    (["adapt", "segmentation", "--data", "d", "--shots", "0"], "--shots"),
    (["adapt", "segmentation", "--data", "d", "--shots", "2", "--lr", "-1e-3"], "--lr"),
])
def test_bad_number_is_one_clear_line(argv: list[str], option: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2
    assert "\n" not in err and f"error: argument {option}:" in err and "usage:" not in err, err


def test_validators() -> None:
    assert positive_int("3") == 3 and non_negative_int("0") == 0 and port("8000") == 8000
    assert positive_float("1e-3") == 1e-3 and non_negative_float("0") == 0.0
    for fn, bad in ((positive_int, "0"), (positive_int, "1.5"), (non_negative_int, "-1"), (port, "70000"),
                    (positive_float, "0"), (positive_float, "inf"), (non_negative_float, "-0.1")):
        with pytest.raises(argparse.ArgumentTypeError):
            fn(bad)


def test_register_api_refuses_negative_steps() -> None:
    import numpy as np

    from radfm.errors import InputError
    from radfm.io import Volume
    from radfm.tasks.registration.api import register

    vol = Volume(np.zeros((8, 8, 8), np.float32), np.eye(4))
    with pytest.raises(InputError, match="instance_steps"):
        register(vol, vol, instance_steps=-5)
