"""``radfm bench registration``: goal bookkeeping and notes (the run itself needs ../shared data and ANTs)."""

from __future__ import annotations

from radfm.eval.benchmarks import registration as bench


def _row(method: str, dice: float, fold: float, t: float | None) -> dict:
    return {"task": "(a) T1 brain, 2 simulated warps", "method": method, "Dice (30 structures)": dice,
            "folding %": fold, "time s/pair": t}


def test_goals_are_judged_for_every_radfm_row_against_syn() -> None:
    rows = [_row("no registration", 0.7, 0.0, None), _row("radfm (shipped model)", 0.89, 0.0001, 2.0),
            _row("radfm (shipped model) + 50 instance steps", 0.945, 0.2, 40.0), _row("ANTs SyN", 0.94, 0.0, 120.0),
            {"task": "(b) Colin27 -> MNI152", "method": "radfm (shipped model)", "folding %": 5.0, "time s/pair": 1.0}]
    g = bench._goals(rows)
    assert set(g) == {"radfm (shipped model)", "radfm (shipped model) + 50 instance steps"}
    net, inst = g["radfm (shipped model)"], g["radfm (shipped model) + 50 instance steps"]
    assert net["folding <= 0.1 %"] and not net["Dice >= SyN"] and net["time <= SyN / 20"]
    assert abs(net["speed-up vs SyN"] - 60.0) < 1e-9 and abs(net["Dice gap to SyN"] + 0.05) < 1e-9
    assert not inst["folding <= 0.1 %"] and inst["Dice >= SyN"] and not inst["time <= SyN / 20"]


def test_instance_step_option_and_row_keys() -> None:
    args = bench._parser().parse_args(["--instance-steps", "50,0,5,5"])
    assert args.instance_steps == [0, 5, 50] and args.threads == 1
    assert [bench._key(n) for n in args.instance_steps] == ["radfm", "radfm_is5", "radfm_is50"]
    assert bench._names([0, 5])["radfm_is5"] == "radfm (shipped model) + 5 instance steps"


def test_load_note_reports_the_load_each_method_started_under() -> None:
    raw_a = {"pairs": [{"radfm": {"load_average_at_start": (3.0, 2.0, 1.0)},
                        "ants_syn": {"load_average_at_start": (4.0, 2.0, 1.0)}},
                       {"radfm": {"load_average_at_start": (5.0, 2.0, 1.0)},
                        "ants_syn": {"load_average_at_start": (2.0, 2.0, 1.0)}}]}
    note = bench._load_note(raw_a, {})
    assert "radfm 4.00 (min 3.00, max 5.00, 2 runs)" in note and "ants_syn 3.00" in note
    assert bench._load_note({"pairs": []}, {}) == ""
