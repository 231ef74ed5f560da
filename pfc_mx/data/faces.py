"""Procedurally drawn 112×112 faces: per-identity structure, per-image variation.

Usage::

    ident = identity(np.random.default_rng([seed, 0, identity_id]))   # who: a dict of parameters
    bgr = render(ident, np.random.default_rng([seed, 1, identity_id, j]))  # one photo: (112, 112, 3) uint8 BGR

An identity fixes the face outline, skin tone and a smooth skin texture, hair style and
colour, eye spacing/size/slant/iris colour, brows, nose, mouth, ears, and optionally a
beard, glasses, moles and blush. A photo of it varies expression (mouth curve and opening,
eye openness, gaze, brow raise), pose (a small rotation, scale, shift and horizontal
squeeze), background, lighting (gain, colour cast, directional gradient), blur, sensor noise
and an occluding patch. Faces are drawn at 2× and reduced with area interpolation.
"""
from __future__ import annotations

import math
from typing import Dict

import cv2
import numpy as np

SIZE = 112
_S = 2  # drawing supersampling
_SHIFT = 4  # cv2 fixed-point bits of drawing coordinates
_K = _S * (1 << _SHIFT)
_AA = cv2.LINE_AA

SKIN = np.array([(197, 224, 255), (170, 205, 241), (140, 180, 224), (120, 160, 210), (95, 135, 190),
                 (70, 105, 160), (50, 80, 130), (40, 60, 100)], np.float32)  # BGR
HAIR = np.array([(20, 20, 20), (30, 40, 60), (40, 70, 110), (60, 110, 170), (120, 170, 220), (200, 200, 200),
                 (40, 40, 150), (90, 90, 90), (20, 50, 90), (150, 190, 240)], np.float32)
IRIS = np.array([(90, 60, 30), (40, 60, 90), (150, 120, 60), (60, 110, 60), (30, 30, 50), (140, 140, 120)],
                np.float32)
LIPS = np.array([(80, 80, 170), (110, 110, 190), (90, 100, 150), (70, 60, 130), (120, 130, 200), (60, 70, 110)],
                np.float32)
FRAMES = np.array([(20, 20, 20), (30, 30, 120), (120, 60, 20), (160, 160, 160)], np.float32)


def identity(rng: np.random.Generator) -> Dict:
    """Random parameters of one identity (coordinates in 112-pixel units)."""
    u = rng.uniform
    cy, ry = u(55, 60), u(37, 46)
    eye_y = cy - ry * u(0.16, 0.32)
    nose_len = u(9, 16)
    return {
        "skin": SKIN[rng.integers(len(SKIN))] + rng.normal(0, 8, 3),
        "cx": 56.0, "cy": cy, "rx": u(29, 38), "ry": ry, "chin": u(0, 1), "jaw": u(0.0, 0.35),
        "texture": rng.normal(0, 1, (6, 6)), "texture_amp": u(6, 18),
        "hair_style": int(rng.integers(6)), "hair": HAIR[rng.integers(len(HAIR))] + rng.normal(0, 6, 3),
        "hair_base": u(0.42, 0.62), "hair_curve": u(0.0, 0.5), "hair_tilt": u(-0.35, 0.35), "hair_vol": u(2, 8),
        "eye_dx": u(11, 17), "eye_y": eye_y, "eye_w": u(4.0, 6.5), "eye_h": u(1.8, 3.2), "eye_slant": u(-10, 10),
        "iris": IRIS[rng.integers(len(IRIS))] + rng.normal(0, 6, 3), "iris_r": u(0.45, 0.75),
        "brow_gap": u(4, 8), "brow_len": u(7, 12), "brow_thick": u(1.2, 3.0), "brow_angle": u(-12, 15),
        "brow_arch": u(-1, 3),
        "nose_len": nose_len, "nose_w": u(3.5, 7.5), "nose_style": int(rng.integers(3)), "nose_shade": u(0.72, 0.9),
        "mouth_y": eye_y + nose_len + u(8, 13), "mouth_w": u(8, 14), "mouth_curve": u(-2.5, 3.5),
        "lip_thick": u(1.5, 3.5), "lips": LIPS[rng.integers(len(LIPS))] + rng.normal(0, 6, 3),
        "ear": u(5, 9),
        "beard": int(rng.integers(1, 4)) if rng.random() < 0.25 else 0,
        "glasses": int(rng.integers(1, 3)) if rng.random() < 0.2 else 0,
        "frame": FRAMES[rng.integers(len(FRAMES))],
        "moles": rng.uniform(-0.7, 0.7, (int(rng.integers(0, 4)), 2)), "mole_r": u(0.8, 1.6),
        "blush": u(0.1, 0.3) if rng.random() < 0.3 else 0.0,
    }


def _pt(x: float, y: float):
    return int(round(x * _K)), int(round(y * _K))


def _poly(points) -> np.ndarray:
    return np.round(np.asarray(points, np.float64) * _K).astype(np.int32)


def _color(c) -> tuple:
    return tuple(min(255.0, max(0.0, float(v))) for v in c)


def _outline(p: Dict, grow: float = 0.0, n: int = 48) -> np.ndarray:
    """Face outline (n, 2) in 112-pixel units: an ellipse narrowed towards a chin."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    lower = np.clip(np.sin(t), 0, None)  # image y grows downwards
    narrow = 1 - (0.35 * p["chin"] * lower ** 2 + p["jaw"] * lower ** 4)
    x = p["cx"] + (p["rx"] + grow) * np.cos(t) * narrow
    y = p["cy"] + (p["ry"] + grow) * np.sin(t)
    return np.stack([x, y], 1)


def _hair_polygon(p: Dict) -> np.ndarray:
    """The region above the hairline (closed polygon, 112-pixel units)."""
    cx, cy, rx, ry = p["cx"], p["cy"], p["rx"], p["ry"]
    x = np.linspace(cx - rx - 12, cx + rx + 12, 25)
    rel = (x - cx) / rx
    line = cy - ry * p["hair_base"] + p["hair_curve"] * ry * rel ** 2
    style = p["hair_style"]
    if style == 2:  # fringe down to the brows
        line = np.full_like(x, p["eye_y"] - p["brow_gap"] - 3)
    elif style == 3:  # side parting
        line = line + p["hair_tilt"] * (x - cx)
    elif style == 4:  # widow's peak
        line = line + 6 * (0.3 - np.abs(rel).clip(0, 0.3))
    return np.concatenate([np.stack([x, line], 1), [(x[-1], -5.0), (x[0], -5.0)]])


def _draw_face(p: Dict, rng: np.random.Generator, bg: np.ndarray) -> np.ndarray:
    """The face of identity p with this photo's expression, frontal, on a 224×224 uint8 BGR canvas."""
    img = np.empty((SIZE * _S, SIZE * _S, 3), np.uint8)
    img[:] = np.rint(bg).astype(np.uint8)
    cx, cy, rx, ry = p["cx"], p["cy"], p["rx"], p["ry"]
    hair = _color(p["hair"])
    if p["hair_style"] == 5:  # long hair behind the face
        cv2.rectangle(img, _pt(cx - rx - p["hair_vol"], cy - ry * 0.3), _pt(cx + rx + p["hair_vol"], 112), hair,
                      -1, _AA, _SHIFT)
    skin = _color(p["skin"])
    for side in (-1, 1):  # ears
        cv2.ellipse(img, _pt(cx + side * (rx * 0.97), p["eye_y"] + 4), _pt(p["ear"] * 0.55, p["ear"]), 0, 0, 360,
                    _color(p["skin"] * 0.92), -1, _AA, _SHIFT)
    outline = [_poly(_outline(p))]
    cv2.fillPoly(img, outline, skin, _AA, _SHIFT)
    face = np.zeros(img.shape[:2], np.uint8)
    cv2.fillPoly(face, outline, 255, cv2.LINE_8, _SHIFT)
    texture = cv2.resize(p["texture"] * p["texture_amp"], img.shape[:2][::-1], interpolation=cv2.INTER_CUBIC)
    for sign, op in ((1, cv2.add), (-1, cv2.subtract)):  # smooth skin texture, saturating uint8 arithmetic
        part = cv2.cvtColor(np.clip(sign * texture, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
        op(img, part, dst=img, mask=face)
    if p["blush"] > 0:
        for side in (-1, 1):
            cv2.ellipse(img, _pt(cx + side * p["eye_dx"] * 1.1, p["mouth_y"] - 7), _pt(5, 3), 0, 0, 360,
                        _color(p["skin"] * (1 - p["blush"]) + np.array([90, 90, 230]) * p["blush"]), -1, _AA,
                        _SHIFT)
    for mx_, my_ in p["moles"]:
        cv2.circle(img, _pt(cx + mx_ * rx * 0.8, cy + my_ * ry * 0.7), int(p["mole_r"] * _K),
                   _color(p["skin"] * 0.45), -1, _AA, _SHIFT)
    # eyes
    openness = 0.15 if rng.random() < 0.04 else rng.uniform(0.75, 1.15)
    gaze = rng.normal(0, 0.6, 2).clip(-1.2, 1.2)
    brow_raise = rng.normal(0, 0.8)
    for side in (-1, 1):
        ex, ey = cx + side * p["eye_dx"], p["eye_y"]
        slant = side * p["eye_slant"]
        eh = p["eye_h"] * openness
        cv2.ellipse(img, _pt(ex, ey), _pt(p["eye_w"], eh), slant, 0, 360, (235, 235, 235), -1, _AA, _SHIFT)
        if openness > 0.3:
            ir = min(p["eye_h"] * 1.1, p["eye_w"]) * p["iris_r"] * 1.4
            cv2.circle(img, _pt(ex + gaze[0], ey + gaze[1] * 0.4), int(ir * _K), _color(p["iris"]), -1, _AA, _SHIFT)
            cv2.circle(img, _pt(ex + gaze[0], ey + gaze[1] * 0.4), int(ir * 0.45 * _K), (15, 15, 15), -1, _AA,
                       _SHIFT)
        cv2.ellipse(img, _pt(ex, ey), _pt(p["eye_w"], eh), slant, 180, 360, (30, 30, 30), 1 * _S, _AA, _SHIFT)
        # brow: inner end at the nose side
        by = ey - p["brow_gap"] - brow_raise
        inner, outer = ex - side * p["brow_len"] * 0.45, ex + side * p["brow_len"] * 0.55
        tilt = math.tan(math.radians(p["brow_angle"])) * p["brow_len"] * 0.5
        pts = [(inner, by + tilt), ((inner + outer) / 2, by - p["brow_arch"]), (outer, by - tilt * 0.3)]
        cv2.polylines(img, [_poly(pts)], False, _color(p["hair"] * 0.8), max(1, int(p["brow_thick"] * _S)), _AA,
                      _SHIFT)
    # nose
    ny0, ny1, nw = p["eye_y"] + 2, p["eye_y"] + p["nose_len"], p["nose_w"]
    shade = _color(p["skin"] * p["nose_shade"])
    if p["nose_style"] == 0:
        cv2.fillPoly(img, [_poly([(cx, ny0), (cx - nw, ny1), (cx + nw, ny1)])], shade, _AA, _SHIFT)
    elif p["nose_style"] == 1:
        cv2.polylines(img, [_poly([(cx + 1, ny0), (cx + nw * 0.4, ny1 - 1), (cx - nw * 0.5, ny1)])], False, shade,
                      _S, _AA, _SHIFT)
    else:
        cv2.ellipse(img, _pt(cx, ny1 - 2), _pt(nw * 0.7, 3), 0, 0, 360, shade, -1, _AA, _SHIFT)
    for side in (-1, 1):
        cv2.circle(img, _pt(cx + side * nw * 0.45, ny1), int(1.1 * _K), _color(p["skin"] * 0.5), -1, _AA, _SHIFT)
    # mouth
    my, mw = p["mouth_y"], p["mouth_w"]
    curve = p["mouth_curve"] + rng.normal(0, 1.0)
    xs = np.linspace(-1, 1, 9)
    lip = np.stack([cx + xs * mw, my - curve * (1 - xs ** 2) + curve], 1)
    if rng.random() < 0.15:  # open mouth
        lower = np.stack([cx + xs * mw * 0.9, my + rng.uniform(2, 5) * (1 - xs ** 2) + curve * xs ** 2], 1)
        cv2.fillPoly(img, [_poly(np.concatenate([lip, lower[::-1]]))], (40, 30, 60), _AA, _SHIFT)
    cv2.polylines(img, [_poly(lip)], False, _color(p["lips"]), max(1, int(p["lip_thick"] * _S)), _AA, _SHIFT)
    if p["beard"]:
        beard = np.zeros(img.shape[:2], np.uint8)
        if p["beard"] in (1, 3):  # moustache
            cv2.ellipse(beard, _pt(cx, my - 3), _pt(mw * 0.9, 2.5), 0, 180, 360, 255, -1, cv2.LINE_8, _SHIFT)
        if p["beard"] in (2, 3):  # chin beard
            cv2.ellipse(beard, _pt(cx, my + 7 + (ry - 40) * 0.4), _pt(mw * (0.6 if p["beard"] == 2 else 1.1), 6), 0,
                        0, 360, 255, -1, cv2.LINE_8, _SHIFT)
            cv2.bitwise_and(beard, face, dst=beard)
        img[beard > 0] = hair
    if p["hair_style"] != 0:  # hair on top: the head's outline grown by the volume, above the hairline
        head = np.zeros(img.shape[:2], np.uint8)
        cv2.ellipse(head, _pt(cx, cy - p["hair_vol"] * 0.6), _pt(rx + p["hair_vol"], ry + p["hair_vol"]), 0, 0, 360,
                    255, -1, cv2.LINE_8, _SHIFT)
        above = np.zeros_like(head)
        cv2.fillPoly(above, [_poly(_hair_polygon(p))], 255, cv2.LINE_8, _SHIFT)
        cv2.bitwise_and(head, above, dst=head)
        img[head > 0] = hair
    if p["glasses"]:
        frame = _color(p["frame"])
        for side in (-1, 1):
            c = _pt(cx + side * p["eye_dx"], p["eye_y"])
            if p["glasses"] == 1:
                cv2.circle(img, c, int(p["eye_w"] * 1.5 * _K), frame, _S, _AA, _SHIFT)
            else:
                w, h = p["eye_w"] * 1.6, p["eye_w"] * 1.1
                cv2.rectangle(img, _pt(cx + side * p["eye_dx"] - w, p["eye_y"] - h),
                              _pt(cx + side * p["eye_dx"] + w, p["eye_y"] + h), frame, _S, _AA, _SHIFT)
        cv2.line(img, _pt(cx - p["eye_dx"] + p["eye_w"] * 1.4, p["eye_y"]),
                 _pt(cx + p["eye_dx"] - p["eye_w"] * 1.4, p["eye_y"]), frame, _S, _AA, _SHIFT)
    return img


_GRID_Y, _GRID_X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


def render(p: Dict, rng: np.random.Generator) -> np.ndarray:
    """One photo (112, 112, 3) uint8 BGR of identity p; rng decides everything that varies."""
    bg = rng.uniform(30, 225, 3)
    img = _draw_face(p, rng, bg)
    # pose: rotation, scale, shift, horizontal squeeze about the face centre
    angle = float(np.clip(rng.normal(0, 4), -10, 10))
    scale = float(np.exp(rng.normal(0, 0.03)))
    shift = np.clip(rng.normal(0, 2.0, 2), -5, 5) * _S
    m = cv2.getRotationMatrix2D((p["cx"] * _S, p["cy"] * _S), angle, scale)
    m[0, :2] *= float(np.exp(rng.normal(0, 0.05)))
    m[0, 2] = p["cx"] * _S - m[0, 0] * p["cx"] * _S - m[0, 1] * p["cy"] * _S
    m[:, 2] += shift
    img = cv2.warpAffine(img, m, img.shape[:2][::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=tuple(float(v) for v in bg))
    img = cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    # lighting: gain, colour cast, directional gradient
    theta = rng.uniform(0, 2 * math.pi)
    ramp = ((_GRID_X - 56) * math.cos(theta) + (_GRID_Y - 56) * math.sin(theta)) / 56
    gain = (math.exp(rng.normal(0, 0.1)) * (1 + rng.normal(0, 0.04, 3))).astype(np.float32)
    img = img.astype(np.float32) * gain * (1 + rng.uniform(0, 0.25) * ramp)[:, :, None]
    if rng.random() < 0.15:  # occluding patch
        w, h = rng.uniform(15, 40), rng.uniform(10, 30)
        x0, y0 = rng.uniform(16, 96 - w), rng.uniform(16, 100 - h)
        color = tuple(float(v) for v in rng.uniform(0, 255, 3))
        if rng.random() < 0.5:
            cv2.rectangle(img, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)), color, -1)
        else:
            cv2.ellipse(img, (int(x0 + w / 2), int(y0 + h / 2)), (int(w / 2), int(h / 2)), 0, 0, 360, color, -1)
    if rng.random() < 0.25:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.1))
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(1, 5))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
