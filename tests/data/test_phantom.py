"""SIMULATED phantoms: determinism, label/finding consistency, intensity ranges, report text."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from radfm.data.findings import FINDING_TYPES, Finding, max_diameter_mm
from radfm.data.phantom import HEAD_LABELS, TORSO_LABELS, LesionSpec, make_phantom
from radfm.data.report_text import HEAD_ORGANS, findings_mentioned, format_size, render_report
from radfm.errors import InputError

SMALL = (48, 48, 48)


def _brute_force_diameter(mask: np.ndarray, spacing: tuple[float, ...]) -> float:
    pts = np.argwhere(mask) * np.asarray(spacing)
    return (float(pdist(pts).max()) if len(pts) > 1 else 0.0) + float(np.mean(spacing))


@pytest.fixture(scope="module")
def ct_cases():
    return [make_phantom(s, shape=(64, 64, 64), n_lesions=3) for s in range(4)]


def test_same_seed_is_bitwise_identical_and_other_seed_differs():
    a = make_phantom(11, shape=SMALL)
    b = make_phantom(11, shape=SMALL)
    c = make_phantom(12, shape=SMALL)
    assert np.array_equal(a.image.array, b.image.array)
    assert np.array_equal(a.labels.array, b.labels.array)
    assert a.findings == b.findings
    assert a.report.text == b.report.text
    assert not np.array_equal(a.image.array, c.image.array)
    assert not np.array_equal(a.labels.array, c.labels.array)


def test_case_geometry_and_simulated_flag():
    case = make_phantom(0, shape=(40, 48, 56), spacing=(2.0, 1.5, 2.5))
    assert case.image.array.shape == (40, 48, 56) and case.image.array.dtype == np.float32
    assert case.labels.array.shape == (40, 48, 56) and case.labels.array.dtype == np.uint8
    assert case.image.meta["simulated"] is True and case.labels.meta["simulated"] is True
    assert case.image.modality == "CT"
    assert case.image.spacing == pytest.approx((2.0, 1.5, 2.5))
    centre = case.image.affine @ np.array([19.5, 23.5, 27.5, 1.0])
    assert np.allclose(centre[:3], 0.0)  # volume centred on the world origin
    assert set(np.unique(case.labels.array)) <= set(case.label_names)


def test_lesion_findings_match_the_label_map(ct_cases):
    n_lesions = 0
    for case in ct_cases:
        lab = case.labels.array
        for f in case.findings:
            assert f.finding in FINDING_TYPES
            assert f.label_id is not None and f.label_id in case.label_names
            mask = lab == f.label_id
            assert mask.any(), f
            i0, j0, k0, i1, j1, k1 = f.bbox_ijk
            assert mask[i0:i1, j0:j1, k0:k1].sum() == mask.sum()
            if f.finding in ("cardiomegaly", "hepatomegaly", "pleural effusion"):
                continue
            n_lesions += 1
            assert case.label_names[f.label_id].startswith("lesion")
            truth = _brute_force_diameter(mask, case.image.spacing)
            assert f.size_mm == pytest.approx(truth, rel=0.2)
            assert f.location and f.location != "unspecified location"
    assert n_lesions >= 8


def test_max_diameter_of_a_voxelised_ball():
    idx = np.indices((31, 31, 31)) - 15
    ball = (idx**2).sum(0) <= 10**2
    assert max_diameter_mm(ball, (1.0, 1.0, 1.0)) == pytest.approx(21.0, abs=1.0)
    assert max_diameter_mm(ball, (2.0, 2.0, 2.0)) == pytest.approx(42.0, abs=2.0)
    assert max_diameter_mm(np.zeros((3, 3, 3), bool), (1, 1, 1)) == 0.0


def test_ct_intensities_are_realistic_hounsfield_units():
    case = make_phantom(3, shape=(64, 64, 64), n_lesions=0, abnormalities=())
    img, lab = case.image.array, case.labels.array
    mean = {name: float(img[lab == i].mean()) for i, name in TORSO_LABELS.items() if (lab == i).any()}
    assert mean["background"] < -900
    assert mean["right lung"] < -600 and mean["left lung"] < -600
    assert mean["spine"] > 300 and mean["ribs"] > 300
    for organ in ("heart", "liver", "spleen", "right kidney", "left kidney"):
        assert -100 < mean[organ] < 100, (organ, mean[organ])
    assert img.min() >= -1024 and img.max() <= 3071


def test_mr_phantom_is_positive_arbitrary_units_not_hu():
    case = make_phantom(3, modality="MR", shape=(48, 48, 48), n_lesions=1)
    img, lab = case.image.array, case.labels.array
    assert case.image.modality == "MR" and case.image.meta["simulated"] is True
    assert img.min() >= 0.0  # magnitude images: no negative values, no -1000 air
    air, body = img[lab == 0].mean(), img[lab == 1].mean()
    assert body > 5 * air  # air is dark noise, tissue is bright
    fat_vs_lung = img[lab == 1].max() > img[(lab == 2) | (lab == 3)].mean()
    assert fat_vs_lung


def test_head_phantom_has_skull_brain_and_ventricles():
    case = make_phantom(4, body="head", shape=SMALL, n_lesions=1)
    lab, img = case.labels.array, case.image.array
    for i, name in HEAD_LABELS.items():
        assert (lab == i).any(), name
    assert img[lab == 2].mean() > 300  # skull
    assert 0 < img[(lab == 4) | (lab == 5)].mean() < 80  # brain
    assert all(f.organ == "brain" for f in case.findings)
    assert "calvarium" in case.report.text or "calvarial" in case.report.text


def test_explicit_lesion_spec_and_anatomy_independent_of_lesions():
    plain = make_phantom(5, shape=(64, 64, 64), lesions=[], abnormalities=())
    liver = np.argwhere(plain.labels.array == 5)
    centre = tuple(int(v) for v in liver[len(liver) // 2])
    spec = LesionSpec("liver", 12.0, contrast=-60.0, center_ijk=centre, kind="cyst")
    case = make_phantom(5, shape=(64, 64, 64), lesions=[spec], abnormalities=())
    (f,) = case.findings
    assert f.finding == "cyst" and f.organ == "liver" and "hepatic" in f.location
    lesion = case.labels.array == f.label_id
    assert lesion[centre]
    assert np.array_equal(case.labels.array[~lesion], plain.labels.array[~lesion])
    assert case.image.array[lesion].mean() < plain.image.array[lesion].mean() - 25
    assert findings_mentioned(case.report.text) == {"cyst"}


def test_bad_lesion_specs_raise_input_errors():
    with pytest.raises(InputError, match="not inside the liver"):
        make_phantom(0, shape=SMALL, lesions=[LesionSpec("liver", 10.0, center_ijk=(0, 0, 0))])
    with pytest.raises(InputError, match="unknown lesion organ"):
        make_phantom(0, shape=SMALL, lesions=[LesionSpec("pancreas", 10.0)])
    with pytest.raises(InputError, match="head"):
        make_phantom(0, shape=SMALL, lesions=[LesionSpec("brain", 10.0)])
    with pytest.raises(InputError, match="modality"):
        make_phantom(0, shape=SMALL, modality="PET")  # type: ignore[arg-type]


def test_abnormal_organ_states_become_findings():
    case = make_phantom(6, shape=(64, 64, 64), n_lesions=0,
                        abnormalities=["cardiomegaly", "hepatomegaly", "pleural effusion"])
    names = {f.finding for f in case.findings}
    assert names == {"cardiomegaly", "hepatomegaly", "pleural effusion"}
    assert (case.labels.array == 11).any()
    eff = next(f for f in case.findings if f.finding == "pleural effusion")
    assert eff.location in ("left", "right", "bilateral") and eff.size_mm is None
    normal = make_phantom(6, shape=(64, 64, 64), n_lesions=0, abnormalities=())
    assert (case.labels.array == 4).sum() > 1.3 * (normal.labels.array == 4).sum()  # bigger heart
    assert normal.findings == [] and findings_mentioned(normal.report.text) == set()
    assert normal.report.impression_text in ("No acute abnormality.", "Normal examination.",
                                             "No significant abnormality.")


def test_report_sentences_link_to_their_findings():
    for seed in range(6):
        case = make_phantom(seed, shape=SMALL, n_lesions=2 + seed % 2, body="head" if seed == 5 else "chest_abdomen")
        assert findings_mentioned(case.report.text) == {f.finding for f in case.findings}
        for s in case.report.sentences:
            if s.finding_index is None:
                assert findings_mentioned(s.text) == set(), s.text
            else:
                assert findings_mentioned(s.text) == {case.findings[s.finding_index].finding}, s.text
        linked = {s.finding_index for s in case.report.sentences if s.section == "findings"} - {None}
        assert linked == set(range(len(case.findings)))


def _random_findings(rng: np.random.Generator) -> list[Finding]:
    focal = {"lung": ["nodule", "mass"], "liver": ["cyst", "hypodense lesion", "hyperintense lesion", "mass"],
             "kidney": ["cyst", "mass", "hypointense lesion"], "spleen": ["hypodense lesion", "cyst"]}
    locs = {"lung": "right lower lobe", "liver": "right hepatic lobe segment VII",
            "kidney": "lower pole of the left kidney", "spleen": "upper pole of the spleen"}
    out = []
    for _ in range(int(rng.integers(0, 4))):
        organ = list(focal)[int(rng.integers(4))]
        kind = focal[organ][int(rng.integers(len(focal[organ])))]
        out.append(Finding(kind, organ, float(rng.uniform(3, 60)), locs[organ], 12 + len(out)))
    if rng.random() < 0.3:
        out.append(Finding("cardiomegaly", "heart", 150.0, "heart", 4))
    if rng.random() < 0.3:
        out.append(Finding("hepatomegaly", "liver", 190.0, "liver", 5))
    if rng.random() < 0.3:
        out.append(Finding("pleural effusion", "pleura", None, ("left", "right", "bilateral")[int(rng.integers(3))], 11))
    return out


def test_report_mentions_exactly_its_findings_over_many_seeds():
    for seed in range(40):
        rng = np.random.default_rng(seed)
        findings = _random_findings(rng)
        for modality in ("CT", "MR"):
            report = render_report(findings, seed=seed, modality=modality)
            assert findings_mentioned(report.text) == {f.finding for f in findings}, report.text
    head = [Finding("mass", "brain", 31.0, "left frontal lobe", 7)]
    for seed in range(10):
        report = render_report(head, seed=seed, organs_examined=HEAD_ORGANS)
        assert findings_mentioned(report.text) == {"mass"}, report.text
        assert findings_mentioned(render_report([], seed=seed, organs_examined=HEAD_ORGANS).text) == set()


def test_negation_aware_matcher():
    assert findings_mentioned("No pleural effusion.") == set()
    assert findings_mentioned("Small left pleural effusion.") == {"pleural effusion"}
    assert findings_mentioned("No nodule, but a 3.1 cm mass in the left upper lobe.") == {"mass"}
    assert findings_mentioned("No midline shift or mass effect.") == set()
    assert findings_mentioned("The liver is enlarged. Enlarged heart.") == {"hepatomegaly", "cardiomegaly"}
    assert findings_mentioned("A 2 cm hypodense liver lesion. No renal cyst.") == {"hypodense lesion"}


def test_wording_varies_and_sizes_are_formatted():
    f = [Finding("nodule", "lung", 8.0, "right upper lobe", 12)]
    texts = {render_report(f, seed=s).findings_text for s in range(20)}
    assert len(texts) > 5
    assert format_size(8.2) == "8 mm" and format_size(23.4) == "2.3 cm" and format_size(9.7) == "1.0 cm"
    assert "An 8 mm" in " ".join(texts) or "8 mm pulmonary nodule" in " ".join(texts)


def test_finding_round_trips_through_json():
    f = Finding("nodule", "lung", 8.5, "left lower lobe", 13, (1, 2, 3, 4, 5, 6))
    assert Finding.from_dict(json.loads(json.dumps(f.to_dict()))) == f
    with pytest.raises(ValueError):
        Finding.from_dict({**f.to_dict(), "sizee": 1})


def test_phantom_is_fast():
    make_phantom(0, shape=(64, 64, 64))  # warm imports
    t64 = min(_timed(lambda s=s: make_phantom(s, shape=(64, 64, 64))) for s in range(2))
    t96 = min(_timed(lambda s=s: make_phantom(s)) for s in range(2))
    # Budgets are 0.5 s / 1.5 s; the bounds leave room for a loaded CI machine.
    assert t64 < 1.5 and t96 < 4.0, (t64, t96)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
