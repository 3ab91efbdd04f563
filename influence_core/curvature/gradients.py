"""Per-example layer gradients without materialising them, and the parameter layout.

For a tracked layer (Linear or Conv2d) and example i we capture the layer input a_i (T, d_in),
with a constant 1 appended when the layer has a bias, and the gradient of the SUMMED batch loss
w.r.t. the layer output g_i (T, d_out); the weight gradient is DW_i = g_i^T a_i (d_out, d_in).
Linear layers have T = 1 (or the sequence length for (B, S, d) inputs); Conv2d layers unfold
their input into T patches. The flat parameter vector theta concatenates, layer by layer, the
matrices [W | b] (d_out, d_in) in row-major order. A Conv2d weight (C_out, C, kh, kw) enters
its matrix with columns in (kh, kw, C) order, the order its patches are written in (LAYOUT):
each kernel offset's input pixels are then one contiguous run of C values, so a patch buffer
fills with contiguous copies (F.unfold's (C, kh, kw) order scatters every value 9 apart: 5-13x
slower here). weight_matrix / weight_of convert between a module's tensors and its matrix.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LAYOUT = "conv-columns-kh-kw-c"  # recorded in artifacts: factors and indices depend on it


class UnsupportedLayerError(ValueError):
    """A layer that cannot be tracked (not Linear / Conv2d, grouped convolution, ...)."""


@dataclass(frozen=True)
class LayerSpec:
    name: str
    d_out: int
    d_in: int  # includes the bias column

    @property
    def size(self) -> int:
        return self.d_out * self.d_in


class TrackedModel:
    """A model with a chosen set of tracked Linear/Conv2d layers (all of them by default).

    Parameters of untracked modules are frozen: influence is computed w.r.t. tracked ones."""

    def __init__(self, model: nn.Module, layers: list[str] | None = None,
                 input_dtype: torch.dtype | None = None) -> None:
        self.model = model.eval()
        # captured layer inputs a in this dtype (precompute's bfloat16 products: half the bytes
        # to copy; None: the model's dtype). Output gradients g keep the model's dtype.
        self._input_dtype, self._this_thread = input_dtype, threading.local()
        bypassed = {  # MultiheadAttention calls F.linear on out_proj's weight: no hook fires
            f"{n}.out_proj" for n, m in model.named_modules()
            if isinstance(m, nn.MultiheadAttention)
        }
        available = {n: m for n, m in model.named_modules()
                     if isinstance(m, (nn.Linear, nn.Conv2d)) and n not in bypassed}
        if layers:
            named = dict(model.named_modules())
            for n in layers:
                if n not in named:
                    raise UnsupportedLayerError(
                        f"no layer named {n!r}; layers: {sorted(available)}")
                if n not in available:
                    raise UnsupportedLayerError(
                        f"layer {n!r} is a {type(named[n]).__name__}; only Linear and Conv2d "
                        "layers can be tracked (others stay frozen)"
                    )
        names = list(layers) if layers else list(available)
        if not names:
            raise UnsupportedLayerError("the model has no Linear or Conv2d layer to track")
        self.modules = {n: available[n] for n in names}
        for n, m in self.modules.items():
            if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros"):
                raise UnsupportedLayerError(
                    f"{n}: grouped or non-zero-padded Conv2d is unsupported")
        self.specs = [
            LayerSpec(n, m.weight.shape[0], m.weight[0].numel() + (m.bias is not None))
            for n, m in self.modules.items()
        ]

    @property
    def input_dtype(self) -> torch.dtype | None:
        """The dtype layer inputs are captured in, in this thread (inputs_in may override it)."""
        return getattr(self._this_thread, "dtype", self._input_dtype)

    @input_dtype.setter
    def input_dtype(self, dtype: torch.dtype | None) -> None:
        self._input_dtype = dtype

    @contextmanager
    def inputs_in(self, dtype: torch.dtype | None) -> Iterator[None]:
        """Within the block, captures in THIS thread record layer inputs in `dtype` (None: no
        change); other threads (the app's prefetch scoring pairwise influence on the same
        model) keep full precision."""
        before = self.input_dtype
        self._this_thread.dtype = dtype or before
        try:
            yield
        finally:
            self._this_thread.dtype = before

    @property
    def num_params(self) -> int:
        return sum(s.size for s in self.specs)

    def flat_params(self) -> torch.Tensor:
        """theta (p,) in the layout above."""
        return torch.cat([self._matrix(m).reshape(-1) for m in self.modules.values()])

    @staticmethod
    def _matrix(m: nn.Module) -> torch.Tensor:
        w = weight_matrix(m, m.weight.detach())
        return torch.cat([w, m.bias.detach()[:, None]], 1) if m.bias is not None else w

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """(k, p) -> per layer (k, d_out, d_in)."""
        parts = torch.split(flat, [s.size for s in self.specs], dim=-1)
        return [x.reshape(*flat.shape[:-1], s.d_out, s.d_in) for x, s in zip(parts, self.specs)]

    def as_params(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """theta (p,) -> {"<layer>.weight": ..., "<layer>.bias": ...} shaped as the modules'
        parameters (for torch.func.functional_call); differentiable."""
        params = {}
        for (name, m), mat in zip(self.modules.items(), self.split(flat)):
            w_size = m.weight[0].numel()
            params[f"{name}.weight"] = weight_of(m, mat[:, :w_size])
            if m.bias is not None:
                params[f"{name}.bias"] = mat[:, w_size]
        return params

    @torch.no_grad()
    def add_to_params(self, delta: torch.Tensor) -> None:
        """theta += delta (p,), in place on the tracked layers."""
        for m, d in zip(self.modules.values(), self.split(delta.to(torch.float64))):
            w_size = m.weight[0].numel()
            m.weight.add_(weight_of(m, d[:, :w_size]).to(m.weight.dtype))
            if m.bias is not None:
                m.bias.add_(d[:, w_size].to(m.bias.dtype))

    @contextmanager
    def capture(self) -> Iterator[dict[str, list]]:
        """Within the block, every forward IN THIS THREAD records per layer [a (B,T,d_in), output
        tensor]. Hooks live on shared modules: a forward of the same model in another thread
        (the app's background prefetch, a second browser session) is not recorded here."""
        store: dict[str, list] = {}
        owner = threading.get_ident()
        handles = [m.register_forward_hook(self._hook(n, store, owner, self.input_dtype))
                   for n, m in self.modules.items()]
        try:
            yield store
        finally:
            for h in handles:
                h.remove()

    @staticmethod
    def _hook(name: str, store: dict, owner: int, dtype: torch.dtype | None) -> Callable:
        def hook(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            if threading.get_ident() == owner:
                x = inputs[0].detach()
                store[name] = [_layer_input(m, x if dtype is None else x.to(dtype)), out]

        return hook


def weight_matrix(m: nn.Module, w: torch.Tensor) -> torch.Tensor:
    """A weight-shaped tensor of `m` (the weight, its gradient, ...) as a (d_out, d_in - bias)
    matrix in this module's column order: Conv2d (C_out, C, kh, kw) -> (C_out, kh*kw*C)."""
    if isinstance(m, nn.Conv2d):
        w = w.permute(0, 2, 3, 1)
    return w.reshape(w.shape[0], -1)


def weight_of(m: nn.Module, mat: torch.Tensor) -> torch.Tensor:
    """The inverse of weight_matrix: (d_out, d_in - bias) -> m.weight.shape."""
    if isinstance(m, nn.Conv2d):
        c_out, c, kh, kw = m.weight.shape
        return mat.reshape(c_out, kh, kw, c).permute(0, 3, 1, 2)
    return mat.reshape(m.weight.shape)


def _patches(m: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """(B, T, kh*kw*C + bias) conv input patches, columns in (kh, kw, C) order (LAYOUT), the bias
    column last: one copy from a strided view of the (channels-last) input into the buffer.
    Measured on mnist/cnn conv2 (batch 128): F.unfold + transpose + cat 16.6 ms; (C, kh, kw)
    order by 9 slice copies 3.3-4.9 ms; this 0.7 ms."""
    (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
    if m.padding == "same":  # stride 1 (PyTorch's rule): total d(k-1), the extra one at the end
        pads = (dw * (kw - 1) // 2, dw * (kw - 1) - dw * (kw - 1) // 2,
                dh * (kh - 1) // 2, dh * (kh - 1) - dh * (kh - 1) // 2)
    else:
        ph, pw = (0, 0) if m.padding == "valid" else m.padding
        pads = (pw, pw, ph, ph)
    if any(pads):
        x = F.pad(x, pads)
    b, c, height, width = x.shape
    h, w = (height - dh * (kh - 1) - 1) // sh + 1, (width - dw * (kw - 1) - 1) // sw + 1
    bias = m.bias is not None
    out = x.new_empty(b, h * w, c * kh * kw + bias)
    rows = x.permute(0, 2, 3, 1)  # (B, H, W, C): a view, contiguous for channels-last input
    sb, sy, sx, sc = rows.stride()
    windows = rows.as_strided((b, h, w, kh, kw, c), (sb, sy * sh, sx * sw, sy * dh, sx * dw, sc))
    out[:, :, :c * kh * kw].view(b, h, w, kh, kw, c).copy_(windows)
    if bias:
        out[:, :, -1] = 1
    return out


def _layer_input(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(m, nn.Conv2d):
        return _patches(m, x)
    x = x[:, None, :] if x.ndim == 2 else x.reshape(x.shape[0], -1, x.shape[-1])
    if m.bias is not None:
        x = torch.cat([x, x.new_ones(*x.shape[:-1], 1)], -1)
    return x  # (B, T, d_in)


def _output_grad(out_grad: torch.Tensor) -> torch.Tensor:
    if out_grad.ndim == 4:  # conv: (B, C_out, H, W) -> (B, T, C_out)
        return out_grad.flatten(2).transpose(1, 2)
    if out_grad.ndim == 2:
        return out_grad[:, None, :]
    return out_grad.reshape(out_grad.shape[0], -1, out_grad.shape[-1])


def forward_capture(tracked: TrackedModel, x: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """Forward x recording every tracked layer's input; returns (store, outputs)."""
    with tracked.capture() as store:
        outputs = tracked.model(x)
    return store, outputs


def backward_pairs(
    tracked: TrackedModel, store: dict, losses: torch.Tensor, retain_graph: bool = False
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (a (B, T, d_in), g (B, T, d_out)) for the SUM of `losses` (B,): example i's
    gradient is g_i^T a_i because the batch loss is summed."""
    names = list(tracked.modules)
    grads = torch.autograd.grad(
        losses.sum(), [store[n][1] for n in names], retain_graph=retain_graph
    )
    return [(store[n][0], _output_grad(g)) for n, g in zip(names, grads)]


def layer_grads(
    tracked: TrackedModel, x: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Forward x and backward the sum of loss_fn(outputs) (B,); returns (pairs, outputs)."""
    store, outputs = forward_capture(tracked, x)
    return backward_pairs(tracked, store, loss_fn(outputs)), outputs


def per_example_grads(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Materialise flat per-example gradients (B, p) from per-layer (a, g)."""
    return torch.cat(
        [torch.einsum("bto,bti->boi", g, a).flatten(1) for a, g in pairs], dim=1
    )


def dot_with_layers(
    pairs: list[tuple[torch.Tensor, torch.Tensor]], vectors: list[torch.Tensor]
) -> torch.Tensor:
    """(B, k) inner products <DW_i, V_q> summed over layers, never forming DW_i for T = 1:
    g_i^T V_q a_i per layer; vectors are per layer (k, d_out, d_in)."""
    total = 0
    for (a, g), v in zip(pairs, vectors):
        v = v.to(a.dtype)
        if a.shape[1] == 1:  # (a_i V_q^T) . g_i: one GEMM per chunk of queries
            k, d_out, d_in = v.shape
            step = max(1, 2**25 // max(1, len(a) * d_out))  # (B, step * d_out) floats at most
            parts = [((a[:, 0] @ v[lo:lo + step].reshape(-1, d_in).T)
                      .reshape(len(a), -1, d_out) * g[:, 0, None, :]).sum(2)
                     for lo in range(0, k, step)]
            total = total + torch.cat(parts, 1)
        else:
            dw = torch.einsum("bto,bti->boi", g, a).flatten(1)
            total = total + dw @ v.flatten(1).T
    return total
