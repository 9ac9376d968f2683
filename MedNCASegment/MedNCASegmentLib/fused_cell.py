"""The inference form of a 2D Med-NCA cell: perception and first layer folded into one convolution.

A 2D :class:`~MedNCASegmentLib.nca.NCACell` computes ``fc0(cat[s, perceive(s)])``: a 3x3
convolution ``C -> 2C`` followed by a 1x1 layer ``3C -> hidden``. Both are linear, so their
composition is a single 3x3 convolution ``C -> hidden`` whose centre tap also carries the
identity part ``fc0[:, :C]``, with bias ``fc0[:, C:] @ perceive.bias + fc0.bias``. Reflect padding
commutes with the fold (it pads the state, which both forms convolve). This is not less
arithmetic (9*C*hidden = 36,864 multiply-adds per cell against 9*C*2C + 3C*hidden = 30,720), but
one large convolution with the ReLU fused into it (oneDNN post-op) runs at a much higher
fraction of the machine's peak than two small layers, a concatenation and a separate ReLU
(measured in Testing/Benchmarks/mednca_benchmark.py).

The state stays float32 (the automaton accumulates small updates over 40 steps); the network
may run in bfloat16 where the CPU has native bf16 arithmetic (AVX-512 BF16 or AMX), which
oneDNN then uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .nca import NCACell

PRECISIONS = ("auto", "float32", "bfloat16")


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX tiles); elsewhere bf16 is
    emulated and slower than float32."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return torch.backends.mkldnn.is_available() and any(check() for check in checks if check is not None)
    except RuntimeError:
        return False


def network_dtype(precision: str) -> torch.dtype:
    """The dtype of the cell's network for a precision name (``auto``: bfloat16 where native)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        return torch.bfloat16 if native_bfloat16() else torch.float32
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


def _mkldnn_conv_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, [0, 0], [1, 1], [1, 1], 1, "relu", [], "")


def _plain_conv_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.relu_(F.conv2d(x, weight, bias))


def _choose_conv_relu():
    """oneDNN's convolution with a fused ReLU (the op torch.compile uses) where this torch build
    has it and it agrees with the plain form; plain convolution + ReLU otherwise."""
    try:
        x = torch.rand(1, 4, 5, 5).contiguous(memory_format=torch.channels_last)
        w = torch.randn(6, 4, 3, 3).contiguous(memory_format=torch.channels_last)
        b = torch.randn(6)
        if torch.allclose(_mkldnn_conv_relu(x, w, b), _plain_conv_relu(x, w, b), atol=1e-5):
            return _mkldnn_conv_relu
    except (AttributeError, RuntimeError):
        pass
    return _plain_conv_relu


_conv_relu = None


def conv_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """relu(conv2d(x, weight, bias)), no padding, stride 1."""
    global _conv_relu
    if _conv_relu is None:
        _conv_relu = _choose_conv_relu()
    return _conv_relu(x, weight, bias)


class FusedCell:
    """One 2D cell for inference: ``state[:, inputs:] += fc1(relu(conv_k(state))) * fire``.

    Built from a trained 2D :class:`NCACell` without batch norm; the weights are folded in
    float64 and then cast to ``dtype`` (the network's precision). Tensors are channels-last.
    """

    memory_format = torch.channels_last

    def __init__(self, cell: NCACell, dtype: torch.dtype = torch.float32) -> None:
        if cell.dims != 2 or not isinstance(cell.norm, torch.nn.Identity):
            raise ValueError("only 2D cells without batch norm can be fused")
        perceive, fc0, fc1 = cell.perceive, cell.fc0, cell.fc1
        channels = perceive.in_channels
        kernel = perceive.kernel_size[0]
        w0 = fc0.weight.detach().double()[:, :, 0, 0]  # (hidden, 3C)
        folded = torch.einsum("ho,ocij->hcij", w0[:, channels:], perceive.weight.detach().double())
        folded[:, :, kernel // 2, kernel // 2] += w0[:, :channels]
        bias = w0[:, channels:] @ perceive.bias.detach().double() + fc0.bias.detach().double()
        self.dtype = dtype
        self.pad = kernel // 2
        self.input_channels = cell.input_channels
        self.fire_rate = cell.fire_rate
        self.weight = folded.to(dtype).contiguous(memory_format=torch.channels_last)
        self.bias = bias.to(dtype)
        # fc1 with zero rows for the input channels: the update then covers the whole state, so
        # adding it is one contiguous operation (a channel slice of a channels-last tensor is not).
        out = torch.zeros(channels, fc1.in_channels, 1, 1, dtype=torch.float64)
        out[cell.input_channels:] = fc1.weight.detach().double()
        self.out = out.to(dtype).contiguous(memory_format=torch.channels_last)
        self._buffer: torch.Tensor | None = None

    def step(self, state: torch.Tensor, fire: torch.Tensor) -> None:
        """Update ``state`` (N, C, H, W) float32 channels-last in place where ``fire`` (N, 1, H, W) is 1.0."""
        update = F.conv2d(conv_relu(self._padded(state), self.weight, self.bias), self.out)
        state.addcmul_(update, fire)

    def _padded(self, state: torch.Tensor) -> torch.Tensor:
        """The state reflect-padded in the network's dtype, written into a buffer kept between steps
        (one pass over the state instead of a cast and a padding copy)."""
        p = self.pad
        n, c, h, w = state.shape
        shape = (n, c, h + 2 * p, w + 2 * p)
        if self._buffer is None or self._buffer.shape != shape:
            self._buffer = torch.empty(shape, dtype=self.dtype).contiguous(memory_format=torch.channels_last)
        x = self._buffer
        x[:, :, p:p + h, p:p + w].copy_(state)
        for i in range(p):  # reflect: rows first, then columns over the full height (corners)
            x[:, :, p - 1 - i, p:p + w] = x[:, :, p + 1 + i, p:p + w]
            x[:, :, p + h + i, p:p + w] = x[:, :, p + h - 2 - i, p:p + w]
        for i in range(p):
            x[:, :, :, p - 1 - i] = x[:, :, :, p + 1 + i]
            x[:, :, :, p + w + i] = x[:, :, :, p + w - 2 - i]
        return x

    @property
    def flops_per_cell(self) -> int:
        """Multiply-adds x 2 of one update at one cell (folded convolution and fc1)."""
        return 2 * (self.weight.numel() + self.out.numel())
