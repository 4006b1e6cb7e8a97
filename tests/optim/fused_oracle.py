"""NumPy implementations of the documented fused-optimizer formulas (float64), for tests.

``quantized=True``: the moments are stored as int8_rowwise codes (docs/training.md), updated
in float64 from the decoded rows and encoded again.
"""

from __future__ import annotations

import numpy as np


def reduce_rows(ids, bags, grad_out, psw, mode, padding_idx, freq):
    """{row: summed gradient} of a lookup; ``bags`` is None (one grad row per id) or offsets."""
    ids = np.asarray(ids)
    n = len(ids)
    if bags is None:
        src = np.arange(n)
        coeff = np.ones(n)
    else:
        src = np.repeat(np.arange(len(bags) - 1), np.diff(bags))
        coeff = np.ones(n) if psw is None else np.asarray(psw, dtype=np.float64)
        if mode == "mean":
            for b in range(len(bags) - 1):
                sl = slice(bags[b], bags[b + 1])
                count = int(np.sum(ids[sl] != padding_idx))
                coeff[sl] = coeff[sl] / max(count, 1)
    grads: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for i, row in enumerate(ids.tolist()):
        if row == padding_idx:
            continue
        grads[row] = grads.get(row, 0.0) + coeff[i] * np.asarray(grad_out[src[i]], dtype=np.float64)
        counts[row] = counts.get(row, 0) + 1
    if freq:
        grads = {r: g / counts[r] for r, g in grads.items()}
    return grads


def encode_rows(x, signed):
    """int8_rowwise codes and row scales of ``x`` [U, D], in float64 (the documented formula)."""
    x = np.asarray(x, dtype=np.float64)
    magnitude = np.abs(x) if signed else np.maximum(x, 0.0)
    scale = magnitude.max(1)
    r = magnitude / np.where(scale > 0, scale, 1.0)[:, None]
    if signed:
        return np.clip(np.sign(x) * np.round(np.sqrt(r) * 127), -127, 127).astype(np.int64), scale
    return np.clip(np.round(r**0.25 * 255), 0, 255).astype(np.int64), scale


def decode_rows(codes, scale, signed):
    codes = np.asarray(codes, dtype=np.float64)
    if signed:
        return np.sign(codes) * (np.abs(codes) / 127) ** 2 * np.asarray(scale)[:, None]
    return (codes / 255) ** 4 * np.asarray(scale)[:, None]


class RowwiseCodes:
    """A [V, D] moment stored as int8_rowwise codes: ``m[r]`` decodes row r, ``m[r] = x`` encodes."""

    def __init__(self, shape, signed, value=0.0):
        self.signed = signed
        codes, scale = encode_rows(np.full((1, shape[1]), value), signed)
        self.codes = np.repeat(codes, shape[0], 0)
        self.scale = np.repeat(scale, shape[0])

    def __getitem__(self, r):
        return decode_rows(self.codes[r : r + 1], self.scale[r : r + 1], self.signed)[0]

    def __setitem__(self, r, x):
        codes, scale = encode_rows(np.asarray(x)[None], self.signed)
        self.codes[r], self.scale[r] = codes[0], scale[0]


def _moment(weight, quantized, signed, value=0.0):
    return RowwiseCodes(weight.shape, signed, value) if quantized else np.full_like(weight, value)


class Adagrad:
    def __init__(self, weight, lr, eps, initial=0.0, weight_decay=0.0, decoupled=False, quantized=False):
        self.w = np.array(weight, dtype=np.float64)
        self.s = _moment(self.w, quantized, False, initial)
        self.lr, self.eps, self.wd, self.decoupled = lr, eps, weight_decay, decoupled

    def update(self, grads):
        for r, g in grads.items():
            w = self.w[r]
            if self.wd and not self.decoupled:
                g = g + self.wd * w
            s = self.s[r] + g * g
            self.s[r] = s
            if self.wd and self.decoupled:
                w = w * (1 - self.lr * self.wd)
            self.w[r] = w - self.lr * g / (np.sqrt(s) + self.eps)


class RowWiseAdagrad:
    def __init__(self, weight, lr, eps, weight_decay=0.0, decoupled=False):
        self.w = np.array(weight, dtype=np.float64)
        self.G = np.zeros(len(self.w))
        self.lr, self.eps, self.wd, self.decoupled = lr, eps, weight_decay, decoupled

    def update(self, grads):
        for r, g in grads.items():
            w = self.w[r]
            g_eff = g + self.wd * w if (self.wd and not self.decoupled) else g
            self.G[r] += np.mean(g_eff**2)
            m = self.lr / (np.sqrt(self.G[r]) + self.eps)
            if self.wd and self.decoupled:
                c = 1 - self.lr * self.wd
            elif self.wd:
                c = 1 - m * self.wd
            else:
                c = 1.0
            self.w[r] = c * w - m * g


class LazyAdam:
    def __init__(self, weight, lr, betas, eps, weight_decay=0.0, decoupled=False, per_row=True,
                 quantized=False):
        self.w = np.array(weight, dtype=np.float64)
        self.m = _moment(self.w, quantized, True)
        self.v = _moment(self.w, quantized, False)
        self.t = np.zeros(len(self.w), dtype=np.int64)
        self.table_t = 0
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.wd, self.decoupled, self.per_row = weight_decay, decoupled, per_row

    def update(self, grads):
        self.table_t += 1
        for r, g in grads.items():
            self.t[r] += 1
            t = self.t[r] if self.per_row else self.table_t
            w = self.w[r]
            if self.wd and self.decoupled:
                w = w * (1 - self.lr * self.wd)
            elif self.wd:
                g = g + self.wd * self.w[r]
            m = self.b1 * self.m[r] + (1 - self.b1) * g
            v = self.b2 * self.v[r] + (1 - self.b2) * g * g
            self.m[r], self.v[r] = m, v
            step = self.lr * np.sqrt(1 - self.b2**t) / (1 - self.b1**t)
            self.w[r] = w - step * m / (np.sqrt(v) + self.eps)


class MomentumSGD:
    def __init__(self, weight, lr, momentum, nesterov=False, weight_decay=0.0, decoupled=False,
                 quantized=False):
        self.w = np.array(weight, dtype=np.float64)
        self.b = _moment(self.w, quantized, True)
        self.lr, self.mu, self.nesterov = lr, momentum, nesterov
        self.wd, self.decoupled = weight_decay, decoupled

    def update(self, grads):
        for r, g in grads.items():
            w = self.w[r]
            if self.wd and not self.decoupled:
                g = g + self.wd * w
            b = self.mu * self.b[r] + g
            self.b[r] = b
            step = g + self.mu * b if self.nesterov else b
            if self.wd and self.decoupled:
                w = w * (1 - self.lr * self.wd)
            self.w[r] = w - self.lr * step
