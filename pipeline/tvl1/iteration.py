"""The primal-dual inner iteration of TV-L1 in plain PyTorch, in OpenCV's float32 operation order.

These functions are pure tensor code: ``torch.compile`` fuses them on the CPU, and they are the reference the
fused Triton iteration kernel (:mod:`.triton_step`) is tested against.
"""

from __future__ import annotations

import torch

from actrec.pipeline.tvl1.ops import divergence, forward_gradient

def _dual_f(u: torch.Tensor, px: torch.Tensor, py: torch.Tensor, taut: float):
    """estimateDualVariables for one flow component: p = (p + taut grad u) / (1 + taut |grad u|)."""
    ux, uy = forward_gradient(u)
    # correctly rounded on the CPU, like the hypot OpenCV calls (torch's vector path differs on subnormal inputs);
    # on CUDA torch.hypot is hypotf, off by up to a few ulp, so the CUDA result is not bit-identical to the CPU one
    ng = 1.0 + taut * torch.hypot(ux, uy)
    return (px + taut * ux) / ng, (py + taut * uy) / ng


def _step2(u1, u2, p11, p12, p21, p22, I1wx, I1wy, rho_c, grad_safe, l_t: float, theta: float, taut: float):
    """One primal-dual iteration for flows without the gamma term; returns the new (u1, u2, p..) and the per-pair
    error ``sum |u_new - u|^2`` (float64). Pure tensor code, so it can be fused by ``torch.compile``.

    estimateV's three branches (+l_t I1w', -l_t I1w', -rho/|grad|^2 I1w') are one clamp of -rho/|grad|^2 to
    [-l_t, l_t]; ``grad_safe`` is +inf where |grad|^2 <= FLT_EPSILON, which gives OpenCV's 0 there.
    """
    rho = rho_c + (I1wx * u1 + I1wy * u2)
    fi = torch.clamp((-rho) / grad_safe, -l_t, l_t)
    n1 = (u1 + fi * I1wx) + theta * divergence(p11, p12)
    n2 = (u2 + fi * I1wy) + theta * divergence(p21, p22)
    d1 = n1 - u1
    d2 = n2 - u2
    err = (d1 * d1 + d2 * d2).to(torch.float64).sum(dim=(1, 2))
    q11, q12 = _dual_f(n1, p11, p12, taut)
    q21, q22 = _dual_f(n2, p21, p22, taut)
    return n1, n2, q11, q12, q21, q22, err


def _step3(u1, u2, u3, p11, p12, p21, p22, p31, p32, I1wx, I1wy, rho_c, grad_safe,
           l_t: float, theta: float, taut: float, gamma: float):
    """:func:`_step2` with OpenCV's illumination term u3 (gamma != 0)."""
    rho = (rho_c + (I1wx * u1 + I1wy * u2)) + gamma * u3
    fi = torch.clamp((-rho) / grad_safe, -l_t, l_t)
    n1 = (u1 + fi * I1wx) + theta * divergence(p11, p12)
    n2 = (u2 + fi * I1wy) + theta * divergence(p21, p22)
    n3 = (u3 + fi * gamma) + theta * divergence(p31, p32)
    d1 = n1 - u1
    d2 = n2 - u2
    d3 = n3 - u3
    err = ((d1 * d1 + d2 * d2) + d3 * d3).to(torch.float64).sum(dim=(1, 2))
    q11, q12 = _dual_f(n1, p11, p12, taut)
    q21, q22 = _dual_f(n2, p21, p22, taut)
    q31, q32 = _dual_f(n3, p31, p32, taut)
    return n1, n2, n3, q11, q12, q21, q22, q31, q32, err


def _block2(u1, u2, p11, p12, p21, p22, I1wx, I1wy, rho_c, grad_safe, active, l_t: float, theta: float, taut: float,
            eps, k: int):
    """``k`` inner iterations (:func:`_step2`) of the pairs flagged in ``active`` ((N,) bool).

    A pair whose error ``sum |u_new - u|^2`` drops to ``<= eps`` after an iteration keeps that iteration's result
    and is frozen for the rest (OpenCV leaves the warp there); frozen pairs do not change. Returns the state and the
    updated mask. Several iterations per call keep the Python/dispatch overhead of compiled code low.
    """
    st = (u1, u2, p11, p12, p21, p22)
    for _ in range(k):
        out = _step2(*st, I1wx, I1wy, rho_c, grad_safe, l_t, theta, taut)
        m = active.view(-1, 1, 1)
        st = tuple(torch.where(m, a, b) for a, b in zip(out[:-1], st))
        active = active & (out[-1] > eps)
    return (*st, active)


def _block3(u1, u2, u3, p11, p12, p21, p22, p31, p32, I1wx, I1wy, rho_c, grad_safe, active,
            l_t: float, theta: float, taut: float, gamma: float, eps, k: int):
    """:func:`_block2` with the illumination term (gamma != 0)."""
    st = (u1, u2, u3, p11, p12, p21, p22, p31, p32)
    for _ in range(k):
        out = _step3(*st, I1wx, I1wy, rho_c, grad_safe, l_t, theta, taut, gamma)
        m = active.view(-1, 1, 1)
        st = tuple(torch.where(m, a, b) for a, b in zip(out[:-1], st))
        active = active & (out[-1] > eps)
    return (*st, active)


_STATE2 = ("u1", "u2", "p11", "p12", "p21", "p22")
_STATE3 = ("u1", "u2", "u3", "p11", "p12", "p21", "p22", "p31", "p32")
_WARP_CONSTS = ("I1wx", "I1wy", "rho_c", "grad_safe")