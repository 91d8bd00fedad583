"""The ResNet-LSTM rewritten for inference as large matrix products (same math, same weights).

Why: ONNX Runtime's CPU Conv runs one small GEMM per sample (a 3-position sequence with 512
channels is a [512 x 768] x [768 x 3] product, 65 536 times per batch) and its LSTM kernel steps
the batch in small pieces; both leave most of the FMA units idle. Here the activations are kept
channels-last, [batch, positions, channels], so that

- every 3-wide convolution is one GEMM over batch x positions rows: the three shifted windows are
  concatenated along the channels (im2col) and multiplied by the kernel laid out [3 C_in, C_out];
- BatchNorm (eval mode: an affine map per channel) is folded into the preceding weights and a bias;
- the projected skip of a residual block shares the second convolution's GEMM (its input is the
  stride-sampled block input, appended to that im2col; its kernel rows appended to the weights);
- the stem (one input channel, few positions) is a single dense matrix from the features to
  positions x channels (a Toeplitz matrix: a few % more FLOPs than the 3-tap form, one GEMM);
- the LSTM is unrolled over its few steps: the input projection of all steps is one GEMM, and each
  step adds h @ W_hh and applies the gates elementwise.

Only `gemm_friendly` is public: it takes a trained ResNetLSTM (eval mode) and returns a module with
the same input and output; models/onnx_export.py exports it in place of the network.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from models.resnet_lstm import ResidualBlock1D, ResNetLSTM


def _bn_affine(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as y = x * scale + shift, per channel (float64 for the folding)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    return scale, shift


def _conv_as_matrix(conv: nn.Conv1d, bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv1d (no bias) + BatchNorm -> W [k * C_in, C_out], b [C_out] for a channels-last im2col
    whose columns run tap-major (tap 0's channels, then tap 1's, ...)."""
    if conv.bias is not None or conv.groups != 1 or conv.dilation[0] != 1:
        raise ValueError(f"unsupported convolution {conv}: expected no bias, groups=1, dilation=1")
    scale, shift = _bn_affine(bn)
    weight = conv.weight.double() * scale[:, None, None]  # [C_out, C_in, k]
    return weight.permute(2, 1, 0).reshape(-1, weight.shape[0]), shift


class _FastBlock(nn.Module):
    """ResidualBlock1D in channels-last form: two GEMMs (conv1; conv2 with the skip appended)."""

    def __init__(self, block: ResidualBlock1D, length: int) -> None:
        super().__init__()
        # The sequence length is fixed by the feature count: static shapes keep the graph free of
        # shape arithmetic (and the trace free of data-dependent branches).
        self.length = int(length)
        for conv, padding in ((block.conv1, 1), (block.conv2, 1), (block.skip[0], 0)):
            if conv.padding[0] != padding or conv.kernel_size[0] != (3 if padding else 1):
                raise ValueError(f"unsupported convolution geometry in a residual block: {conv}")
        if block.conv2.stride[0] != 1:
            raise ValueError(f"the second convolution of a block must have stride 1: {block.conv2}")
        if block.skip[0].stride[0] != block.conv1.stride[0]:
            raise ValueError("the skip projection and the first convolution must share a stride")
        self.stride = int(block.conv1.stride[0])
        self.out_length = (self.length - 1) // self.stride + 1
        w1, b1 = _conv_as_matrix(block.conv1, block.bn1)
        w2, b2 = _conv_as_matrix(block.conv2, block.bn2)
        ws, bs = _conv_as_matrix(block.skip[0], block.skip[1])
        self.register_buffer("w1", w1.float())
        self.register_buffer("b1", b1.float())
        self.register_buffer("w2", torch.cat([w2, ws]).float())
        self.register_buffer("b2", (b2 + bs).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [batch, L, C_in] -> [batch, L', C_out], L' = floor((L - 1) / stride) + 1."""
        s, length, out_length = self.stride, self.length, self.out_length
        c_in = self.w1.shape[0] // 3
        if s == 2:
            # Reading the sequence as pairs (x[2p], x[2p+1]) is a free reshape; window p is then
            # (x[2p-1], pair p), where x[2p-1] is the second half of pair p-1 (zero for p = 0).
            if length % 2:
                x = F.pad(x, (0, 0, 0, 1))
            pairs = x.reshape(-1, out_length, 2 * c_in)
            previous = F.pad(pairs[:, :out_length - 1, c_in:], (0, 0, 1, 0))
            cols = torch.cat([previous, pairs], dim=2)
            sampled = pairs[:, :, :c_in]
        else:
            padded = F.pad(x, (0, 0, 1, 1))
            span = s * (out_length - 1) + 1
            # Window p of the 3-wide, padding-1 convolution covers padded positions p*s + 0, 1, 2.
            taps = [padded[:, k:k + span:s] for k in range(3)]
            cols = torch.cat(taps, dim=2)
            sampled = taps[1]  # x at positions p*s: the input of the 1x1, stride-s skip projection
        h = _gemm_relu(cols, self.w1, self.b1, out_length)
        padded = F.pad(h, (0, 0, 1, 1))
        cols = torch.cat([padded[:, :out_length], h, padded[:, 2:], sampled], dim=2)
        return _gemm_relu(cols, self.w2, self.b2, out_length)


def _gemm_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, positions: int) -> torch.Tensor:
    """relu(x @ weight + bias) over the last axis of x [batch, positions, K] or [batch, K]. Run
    on a 2-D view so that ONNX Runtime fuses MatMul + Add + Relu into one Gemm (it only fuses 2-D
    products); returns [batch, positions, N]."""
    rows = x.reshape(-1, weight.shape[0])
    return torch.relu(torch.matmul(rows, weight) + bias).reshape(-1, positions, weight.shape[1])


class _UnrolledLSTM(nn.Module):
    """A multi-layer, unidirectional, batch-first nn.LSTM (eval mode) over a fixed number of steps;
    returns the last step's hidden state of the top layer."""

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        if lstm.bidirectional or not lstm.batch_first or lstm.proj_size:
            raise ValueError(f"unsupported LSTM {lstm}: expected unidirectional, batch_first, no projection")
        if not lstm.bias:
            raise ValueError(f"unsupported LSTM {lstm}: expected biases")
        self.hidden = lstm.hidden_size
        self.layers = lstm.num_layers
        for layer in range(self.layers):
            w_ih = getattr(lstm, f"weight_ih_l{layer}")
            w_hh = getattr(lstm, f"weight_hh_l{layer}")
            bias = getattr(lstm, f"bias_ih_l{layer}").double() + getattr(lstm, f"bias_hh_l{layer}").double()
            self.register_buffer(f"w_ih{layer}", w_ih.detach().t().contiguous())
            self.register_buffer(f"w_hh{layer}", w_hh.detach().t().contiguous())
            self.register_buffer(f"b{layer}", bias.float())

    def forward(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """x [batch, steps, input] -> h_last [batch, hidden]."""
        H = self.hidden
        seq = x
        h = x.new_zeros(0)
        for layer in range(self.layers):
            w_ih, w_hh, b = (getattr(self, f"{name}{layer}") for name in ("w_ih", "w_hh", "b"))
            # Every step's input projection in one (2-D, so fused) GEMM.
            projected = (torch.matmul(seq.reshape(-1, w_ih.shape[0]), w_ih) + b).reshape(-1, steps, 4 * H)
            outputs = []
            c = None
            for t in range(steps):
                gates = projected[:, t] if c is None else projected[:, t] + torch.matmul(h, w_hh)
                i = torch.sigmoid(gates[:, 0:H])
                g = torch.tanh(gates[:, 2 * H:3 * H])
                o = torch.sigmoid(gates[:, 3 * H:4 * H])
                # The first step starts from c = 0, so its forget gate multiplies nothing.
                c = i * g if c is None else torch.sigmoid(gates[:, H:2 * H]) * c + i * g
                h = o * torch.tanh(c)
                outputs.append(h)
            if layer + 1 < self.layers:
                seq = torch.stack(outputs, dim=1)
        return h


class FastResNetLSTM(nn.Module):
    """standardised features [batch, n_features] -> standardised target [batch], like ResNetLSTM."""

    def __init__(self, network: ResNetLSTM) -> None:
        super().__init__()
        conv, bn = network.stem[0], network.stem[1]
        if conv.in_channels != 1 or conv.kernel_size[0] != 3 or conv.padding[0] != 1 or conv.stride[0] != 1:
            raise ValueError(f"unsupported stem convolution {conv}")
        self.n_features = int(network.n_features)
        self.stem_channels = int(conv.out_channels)
        n = self.n_features
        # The stem as a dense [n_features, n_features x channels] matrix, output channels-last.
        scale, shift = _bn_affine(bn)
        kernel = conv.weight.double()[:, 0, :] * scale[:, None]  # [C, 3]
        dense = torch.zeros(n, n, self.stem_channels, dtype=torch.float64)
        for p in range(n):
            for k in range(3):
                q = p + k - 1
                if 0 <= q < n:
                    dense[q, p, :] = kernel[:, k]
        self.register_buffer("w_stem", dense.reshape(n, -1).float())
        self.register_buffer("b_stem", shift.repeat(n).float())
        blocks, length = [], n
        for block in network.blocks:
            blocks.append(_FastBlock(block, length))
            length = blocks[-1].out_length
        self.blocks = nn.ModuleList(blocks)
        self.steps = length
        self.lstm = _UnrolledLSTM(network.lstm)
        self.register_buffer("w_head", network.head.weight.detach().t().contiguous())
        self.register_buffer("b_head", network.head.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _gemm_relu(x, self.w_stem, self.b_stem, 1).reshape(-1, self.n_features, self.stem_channels)
        for block in self.blocks:
            h = block(h)
        last = self.lstm(h, self.steps)
        return (torch.matmul(last, self.w_head) + self.b_head).squeeze(-1)


def gemm_friendly(network: nn.Module) -> nn.Module:
    """The same function as `network` (a ResNetLSTM in eval mode), built from its current weights
    as large matrix products for fast inference (see the module docstring). The result holds
    copies of the weights: later changes to `network` do not reach it."""
    if not isinstance(network, ResNetLSTM):
        raise TypeError(f"gemm_friendly needs a ResNetLSTM, got {type(network).__name__}")
    if network.training:
        raise ValueError("gemm_friendly folds BatchNorm's running statistics: put the network in eval mode first")
    with torch.no_grad():
        return FastResNetLSTM(network).eval()


def flops_per_cell(network: ResNetLSTM) -> int:
    """Floating-point operations (2 per multiply-add) of one cell through `network`, counted from
    its layer shapes: every convolution tap over its output positions (padding taps included, as
    the im2col GEMMs compute them), the LSTM's input and recurrent products at every step, the
    head. BatchNorm, biases and activations are left out (elementwise, well under 1 %)."""
    macs, length = 0, network.n_features
    stem = network.stem[0]
    macs += length * stem.out_channels * stem.in_channels * stem.kernel_size[0]
    for block in network.blocks:
        out_length = (length - 1) // block.conv1.stride[0] + 1
        for conv in (block.conv1, block.conv2, block.skip[0]):
            macs += out_length * conv.out_channels * conv.in_channels * conv.kernel_size[0]
        length = out_length
    lstm = network.lstm
    for layer in range(lstm.num_layers):
        inputs = lstm.input_size if layer == 0 else lstm.hidden_size
        macs += length * 4 * lstm.hidden_size * (inputs + lstm.hidden_size)
    macs += network.head.in_features * network.head.out_features
    return 2 * macs
