"""Phantom anatomy: the torso (chest/abdomen) and head painted onto a canvas.
"""

from __future__ import annotations

import numpy as np

from radfm.data.phantom.canvas import _Canvas, _Ellipsoid, smooth_noise
from radfm.data.phantom.spec import (
    _T,
)

# --- anatomy ---------------------------------------------------------------------------

def _torso(cv: _Canvas, abnormal: set[str], rng: np.random.Generator) -> dict[str, object]:
    """Paint body, lungs, heart, liver, spleen, kidneys, spine, ribs (and effusion)."""
    g = cv.g
    u0, u1, u2 = g.u
    x, y = u0[:, None], u1[None, :]
    a = 0.88 * (1 + rng.normal(0, 0.03))
    b = 0.64 * (1 + rng.normal(0, 0.04))
    yc = -0.04 + rng.normal(0, 0.015)
    b_y = np.where(y - yc < 0, 0.93 * b, b)  # flatter back
    rho2d = np.sqrt((x / a) ** 2 + ((y - yc) / b_y) ** 2).astype(np.float32)
    rho_body = rho2d[:, :, None] * (1.0 - 0.035 * cv.surface)  # smooth random outline
    fat_in = 1.0 - max(0.09, g.vox_to_u(1.5, 0) / a)
    mus_in = fat_in - max(0.06, g.vox_to_u(1.5, 0) / a)
    body = rho_body < 1.0
    cv.labels[body] = 1
    cv.tissue[body] = _T["soft"]
    cv.tissue[body & (rho_body >= fat_in)] = _T["fat"]
    cv.tissue[body & (rho_body >= mus_in) & (rho_body < fat_in)] = _T["muscle"]
    cavity = rho_body < mus_in - 0.02
    # Paraspinal muscles and visceral fat pockets give the abdomen some structure.
    for side in (-1, 1):
        e = _Ellipsoid(np.array([side * 0.15, yc - 0.49 * b, 0.0]), np.array([0.11, 0.08, 2.0]), np.eye(3))
        cv.paint(e, None, _T["muscle"], amp=0.05, where=cavity)
    fat_pockets = cavity & (u2[None, None, :] < 0.0)
    fat_pockets &= cv.surface < -0.7
    cv.tissue[fat_pockets] = _T["fat"]

    # Lungs (air) in the upper half; heart/liver carve them afterwards.
    for label, side in ((2, 1), (3, -1)):
        e = cv.jitter([side * 0.41, -0.03, 0.42], [0.31 if side > 0 else 0.29, 0.44, 0.52])
        cv.paint(e, label, _T["lung"], amp=0.05, where=cavity)
    # Pericardial fat, then heart (myocardium shell, blood pool inside).
    heart_scale = 1.3 if "cardiomegaly" in abnormal else 1.0
    eh = cv.jitter([-0.10, 0.14, 0.16], [0.27, 0.22, 0.21], scale=heart_scale, base_rot=(-0.5, 0.0, 0.3))
    cv.paint(_Ellipsoid(eh.center, eh.radii * 1.08, eh.rot), 1, _T["fat"], amp=0.03, where=cavity)
    cv.paint(eh, 4, _T["myocardium"], amp=0.03, where=cavity)
    cv.paint(_Ellipsoid(eh.center, eh.radii * 0.62, eh.rot), None, _T["blood"], amp=0.05, only=(4,))
    # Liver: ellipsoid tapering towards patient left (low x), dome carving the right lung.
    liver_scale = 1.22 if "hepatomegaly" in abnormal else 1.0
    el = cv.jitter([0.30, 0.02, -0.27], [0.50, 0.40, 0.28], scale=liver_scale, base_rot=(0.0, 0.15, 0.0))
    if "hepatomegaly" in abnormal:
        el.radii[2] *= 1.12
        el.center[2] -= 0.05
    sl, rho = el.rho(g, pad=1.3)
    if sl is not None:
        xl, _, zl = g.local(sl, el.center, el.rot)
        taper = 0.55 + 0.45 * np.clip((xl / el.radii[0] + 1.0) / 2.0, 0.0, 1.0)
        rho = np.sqrt(rho**2 + (zl / el.radii[2]) ** 2 * (1.0 / taper**2 - 1.0))
        m = (rho < 1.0 + 0.05 * cv.surface[sl]) & cavity[sl]
        cv.labels[sl][m] = 5
        cv.tissue[sl][m] = _T["liver"]
        cv.organs[5] = el
    cv.paint(cv.jitter([-0.55, -0.22, -0.22], [0.13, 0.22, 0.18], base_rot=(0.5, 0.0, 0.0)), 6,
             _T["spleen"], amp=0.05, where=cavity)
    for label, side, zc in ((7, 1, -0.64), (8, -1, -0.56)):
        ek = cv.jitter([side * 0.33, -0.36, zc], [0.11, 0.10, 0.22], base_rot=(side * 0.35, side * -0.15, 0.0))
        cv.paint(ek, label, _T["kidney"], amp=0.04, where=cavity)
        sinus = _Ellipsoid(ek.center - np.array([side * 0.04, 0.0, 0.0]), ek.radii * np.array([0.4, 0.45, 0.55]),
                           ek.rot)
        cv.paint(sinus, None, _T["fat"], amp=0.0, only=(label,))

    # Spine: vertebral bodies (cortical shell, cancellous core) separated by discs,
    # posterior arch around the spinal canal; period ~ one vertebra.
    sp_y = yc - 0.50 * b
    period = 0.22 + rng.normal(0, 0.01)
    phase0 = rng.uniform(0, period)
    z_phase = np.mod(u2 - phase0, period) / period  # (Z,)
    disc_z = (z_phase < 0.22)[None, None, :]
    rx_v, ry_v = 0.085, 0.08
    rv = np.sqrt((u0[:, None] / rx_v) ** 2 + ((u1[None, :] - sp_y) / ry_v) ** 2)[:, :, None]
    vbody = (rv < 1.0) & body
    canal_y = sp_y - ry_v - 0.045
    rc = np.sqrt((u0[:, None] / 0.04) ** 2 + ((u1[None, :] - canal_y) / 0.04) ** 2)[:, :, None]
    arch = ((rc >= 1.0) & (rc < 1.9)) | (
        (np.abs(u0)[:, None, None] < max(0.02, g.vox_to_u(1.0, 0)))
        & ((u1[None, :, None] < canal_y) & (u1[None, :, None] > canal_y - 0.10))
    )
    arch = arch & (z_phase > 0.3)[None, None, :] & (z_phase < 0.85)[None, None, :] & body
    bone = (vbody & ~disc_z) | arch
    cv.labels[bone] = 9
    cv.tissue[vbody & ~disc_z] = _T["cancellous"]
    cv.tissue[(vbody & ~disc_z & (rv > 0.78)) | arch] = _T["cortical"]
    cv.tissue[vbody & disc_z] = _T["disc"]
    cv.labels[vbody & disc_z] = 1
    canal = (rc < 1.0) & body
    cv.tissue[canal] = _T["csf"]
    cv.labels[canal] = 1

    # Ribs: sloping bands in the chest wall (posterior ends higher), open anteriorly.
    rib_in, rib_out = mus_in - 0.07, mus_in - 0.005
    ring = (rho_body >= rib_in) & (rho_body < rib_out)
    rib_period = 0.17 + rng.normal(0, 0.008)
    rib_w = max(0.045, g.vox_to_u(2.2, 2))
    rib_phase = np.mod(u2[None, None, :] + 0.35 * u1[None, :, None] - rng.uniform(0, rib_period), rib_period)
    ribs = ring & (rib_phase < rib_w) & (u2[None, None, :] > -0.4)
    ribs &= ~((np.abs(u0)[:, None, None] < 0.2) & (u1[None, :, None] > yc))
    cv.labels[ribs] = 10
    cv.tissue[ribs] = _T["rib"]

    info: dict[str, object] = {}
    if "pleural effusion" in abnormal:
        side = ("right", "left", "bilateral")[int(rng.integers(3))]
        painted: list[str] = []
        for label, s in ((2, "right"), (3, "left")):
            if side not in (s, "bilateral") or label not in cv.organs:
                continue
            e = cv.organs[label]
            sl = g.box(e.center, e.radii * 1.2)
            if sl is None:
                continue
            _, yl, zl = g.local(sl, e.center)
            amount = rng.uniform(0.35, 0.7)
            m = (cv.labels[sl] == label) & ((yl / e.radii[1] + 0.7 * zl / e.radii[2]) < -1.05 + amount)
            cv.labels[sl][m] = 11
            cv.tissue[sl][m] = _T["effusion"]
            if m.any():
                painted.append(s)
        if painted:
            info["effusion_side"] = "bilateral" if len(painted) == 2 else painted[0]
    return info


def _head(cv: _Canvas, rng: np.random.Generator) -> None:
    """Paint scalp, skull (tables and diploe), CSF, gray/white matter and ventricles."""
    g = cv.g
    eh = cv.jitter([0.0, 0.0, 0.04], [0.80, 0.92, 0.86], c_sd=0.015, r_sd=0.03, rot_sd=0.05)
    sl, rho = eh.rho(g, pad=1.1)
    if sl is None:
        return
    rho = rho / (1.0 + 0.02 * cv.surface[sl])
    r_mm = float(np.min(eh.radii * g.half_mm))
    vox = float(g.spacing.mean())

    def th(mm: float, min_vox: float = 1.6) -> float:
        return max(mm, min_vox * vox) / r_mm

    skull_out = 1.0 - th(5.0)
    skull_in = skull_out - th(7.0, 2.4)
    brain_out = skull_in - th(2.5, 1.0)
    # Cortex: a gray-matter band whose inner border undulates (gyri/sulci at voxel scale).
    folding = smooth_noise(rho.shape, 7.0 / g.spacing, rng)[0]
    gm_in = brain_out - th(5.0, 2.0) * np.clip(1.0 + 0.8 * folding, 0.4, None)
    lab = np.zeros(rho.shape, np.uint8)
    tis = np.zeros(rho.shape, np.uint8)
    for lo, hi, label, tissue in ((skull_out, 1.0, 1, "scalp"), (skull_in, skull_out, 2, "skull"),
                                  (brain_out, skull_in, 3, "csf")):
        m = (rho >= lo) & (rho < hi)
        lab[m], tis[m] = label, _T[tissue]
    diploe = (rho >= skull_in + (skull_out - skull_in) * 0.33) & (rho < skull_out - (skull_out - skull_in) * 0.33)
    tis[diploe] = _T["diploe"]
    gm = (rho < brain_out) & (rho >= gm_in)
    wm = rho < np.minimum(gm_in, brain_out)
    lab[gm], tis[gm] = 4, _T["gm"]
    lab[wm], tis[wm] = 5, _T["wm"]
    cv.labels[sl] = lab
    cv.tissue[sl] = tis
    cv.organs[4] = eh
    cv.organs[5] = eh
    vent_scale = 1.0 + rng.normal(0.0, 0.08)
    for side in (-1, 1):
        ev = cv.jitter([side * 0.10, 0.02, 0.18], [0.06, 0.30, 0.10], scale=vent_scale, c_sd=0.01,
                       r_sd=0.05, rot_sd=0.03, base_rot=(side * 0.15, 0.0, 0.0))
        ev.radii[0] = max(ev.radii[0], g.vox_to_u(1.5, 0))
        cv.paint(ev, 6, _T["csf"], amp=0.05, only=(4, 5))
    e3 = _Ellipsoid(np.array([0.0, -0.02, 0.02]), np.array([max(0.025, g.vox_to_u(1.2, 0)), 0.12, 0.08]),
                    np.eye(3))
    cv.paint(e3, 6, _T["csf"], amp=0.0, only=(4, 5))


