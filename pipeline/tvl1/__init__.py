"""TV-L1 optical flow in PyTorch and Triton, reproducing OpenCV's CPU ``cv2.optflow.DualTVL1OpticalFlow``.

The method is the duality-based TV-L1 scheme of Zach, Pock and Bischof ("A Duality Based Approach for Realtime
TV-L1 Optical Flow", DAGM 2007) as described by Sanchez, Meinhardt-Llopis and Facciolo (IPOL 2013) and implemented
by OpenCV (``modules/optflow/src/tvl1flow.cpp`` in opencv_contrib). Every detail that changes the result follows
that implementation, as run by the opencv-contrib-python 5.0 wheels (x86-64, with Intel IPP):

* input: ``uint8`` images are used as they are (0..255); float images are multiplied by 255, as
  ``Mat::convertTo(..., 255.0)`` does, so float input is expected in [0, 1];
* pyramid: level s is ``cv::resize(level s-1, Size(), s, s, INTER_LINEAR)`` (cascaded): size ``round(size * s)``
  (half to even), pixel-centre map ``src = (dst + 0.5) / s - 0.5`` (``1/s``, not the ratio of the rounded sizes);
  levels narrower or lower than 16 pixels are dropped. For float32 images the wheels run IPP's linear resize,
  which this reproduces bit for bit in tests (``a + w (b - a)`` with one rounding, double-precision weights);
  OpenCV's own C++ path is available as ``resize_linear(..., ipp=False)``;
* per level: centred differences of I1 (halved one-sided differences on the border), then ``warps`` times: warp
  I1 and its gradients with ``cv::remap(INTER_CUBIC, BORDER_CONSTANT 0)`` (OpenCV 5 / IPP: Keys cubic a = -0.75
  at the exact position, zero outside; OpenCV 4 rounded positions to 1/32 pixel), then up to
  ``outer_iterations`` x (``medianBlur`` 5x5 of u1 and u2 with replicated border, ``inner_iterations``
  primal-dual steps). A step: thresholding (v), divergence of p (backward differences, p = 0 outside),
  u = v + theta div p, forward differences of u (0 on the last row/column), p = (p + tau/theta grad u) /
  (1 + tau/theta |grad u|) with a correctly rounded hypot. A warp stops as soon as
  ``sum |u_new - u_old|^2 <= epsilon^2 H W`` after a step;
* between levels: ``cv::resize(u, finer size, INTER_LINEAR)``, then ``u *= 1 / scale_step``; p restarts at 0.

Batching: :func:`tvl1_flow` solves N pairs of one size together. The stopping rule is per pair: a pair whose warp
has converged is frozen on the device while the others go on, and is dropped from the batch at the next host check
(after every block of 3 steps on CPU, where a check costs nothing; once per outer iteration on CUDA). A pair's
result therefore does not depend on the batch it is in (tested bit for bit on the CPU, for both kernel sets).

Arithmetic is float32 in OpenCV's operation order, so each building block matches OpenCV to the last bit or to a
few ulps (IPP's cubic remap and OpenCV's sequential float error sum cannot be reproduced exactly). The TV-L1
iteration amplifies such differences on some real pairs: OpenCV against itself with IPP switched off moves up to
20% of a pair's pixels by more than 0.1 px. Measured parity with OpenCV is in benchmarks/RESULTS.md. On CUDA the
plain-PyTorch kernels are not bit-identical to the CPU: CUDA's ``hypotf`` (behind ``torch.hypot``) is not
correctly rounded, and its reductions may sum in another order; the CUDA result is held to OpenCV's criterion
(pixels within 0.1 px) instead. The Triton kernels compute hypot correctly rounded (in float64) and sum each
pair's error in a fixed order that does not depend on the batch.

Layout: :mod:`.params` (parameters), :mod:`.ops` (the OpenCV-exact operations), :mod:`.iteration` (the primal-dual
step in PyTorch), :mod:`.solver` (the batched driver), :mod:`.backend` (the kernel sets), :mod:`.triton_step` and
:mod:`.triton_warp` (the Triton kernels), :mod:`.floor` (work counts and the memory-bound floor).

Speed: on CPU the iteration is fused with ``torch.compile`` (inductor) by default; it needs a C++ compiler and
compiles once per process (tens of seconds, cached on disk), falling back to eager mode with a warning. On CUDA the
Triton kernels run by default (``kernels="torch"`` selects eager PyTorch). Either compiles once per process and
says so in one line through the ``log`` callback.
Colour input: convert RGB frames with ``cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)`` (or :func:`to_gray`) first, as
OpenCV's users do; this package takes grayscale only.
"""

import importlib

# name -> submodule: imported on first access (PEP 562), so that ``TVL1Params`` (for the command line's defaults)
# does not import torch
_EXPORTS = {"TVL1Params": "params", "tvl1_flow": "solver", "solve_level": "solver", "to_gray": "ops",
            "pyramid_sizes": "ops", "resize_linear": "ops", "remap_cubic": "ops", "median_blur": "ops",
            "centered_gradient": "ops", "forward_gradient": "ops", "divergence": "ops"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
