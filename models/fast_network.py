"""The ResNet-LSTM rewritten for fast inference (same math, same weights): the whole batch as one
image for the convolutions, BatchNorm folded, the LSTM unrolled.

Why: ONNX Runtime's CPU Conv runs one small GEMM per sample (a 3-position sequence with 512
channels is a [512 x 1536] x [1536 x 3] product, thousands of times per batch), and its LSTM
kernel steps the batch in small pieces; both leave most of the FMA units idle. The form before
this one (channels-last GEMMs with an im2col per convolution) fixed that but spent about a quarter
of its time copying the im2col windows (Concat/Slice/Pad in an ORT profile). Here the batch is
laid out as the width of a single image instead, NCHW = [1, channels, positions, cells]:

- every Conv1d + BatchNorm becomes a Conv2d with kernel (k, 1), stride (s, 1), padding (p, 0), so
  it slides along the positions only and never mixes cells; the BatchNorm (eval mode: an affine
  map per channel) is folded into its weights and a bias in float64;
- ONNX Runtime's NCHWc layout transformer runs these as direct convolutions over a wide image
  (no im2col, no per-sample GEMM) and fuses the bias, the residual Add and the ReLU into them;
- after the last block the image [1, C, L, cells] is transposed to [cells, L, C] for the LSTM,
  unrolled over its few steps: every step's input projection is one GEMM, and each step adds
  h @ W_hh and applies the gates elementwise; then the dense head.

Measured side by side on a random Table-4 network (46 features): 1.2-1.5x the cells/s of the
im2col form at batches of 2048-8192 with half its memory, same outputs within 1e-7
(docs/inference-speed.md).

Only `fast_form` and `flops_per_cell` are public: fast_form takes a trained ResNetLSTM (eval mode) and returns a
module with the same input and output; models/onnx_export.py exports it in place of the network.
"""

from __future__ import annotations

import torch
from torch import nn

from models.resnet_lstm import ResidualBlock1D, ResNetLSTM


def _bn_affine(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as y = x * scale + shift, per channel (float64 for the folding)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    return scale, shift


def _folded_conv(conv: nn.Conv1d, bn: nn.BatchNorm1d) -> nn.Conv2d:
    """Conv1d (no bias) + eval BatchNorm as one Conv2d over [1, C, positions, cells] that slides
    along the positions only: kernel (k, 1), stride (s, 1), padding (p, 0), the BatchNorm in the
    weights and the bias."""
    if (conv.bias is not None or conv.groups != 1 or conv.dilation[0] != 1 or conv.padding_mode != "zeros"
            or not isinstance(conv.padding, tuple)):
        raise ValueError(f"unsupported convolution {conv}: expected no bias, groups=1, dilation=1, "
                         "zero padding of a fixed width")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm {bn} does not follow convolution {conv}: channel counts differ")
    scale, shift = _bn_affine(bn)
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, (k, 1), stride=(s, 1), padding=(p, 0))
    with torch.no_grad():
        folded.weight.copy_((conv.weight.double() * scale[:, None, None])[..., None].float())
        folded.bias.copy_(shift.float())
    return folded.requires_grad_(False)


def _out_length(conv: nn.Conv1d, length: int) -> int:
    return (length + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1


class _ImageBlock(nn.Module):
    """ResidualBlock1D over [1, C, positions, cells]: relu(conv2(relu(conv1(x))) + skip(x))."""

    def __init__(self, block: ResidualBlock1D, length: int) -> None:
        super().__init__()
        skip_conv, skip_bn = block.skip[0], block.skip[1]
        # The residual add needs both branches at the same length; checked here, for the feature
        # count at hand, so that a geometry the image form cannot follow fails at export time
        # with the lengths rather than inside ONNX Runtime.
        main = _out_length(block.conv2, _out_length(block.conv1, length))
        skipped = _out_length(skip_conv, length)
        if min(main, skipped) < 1 or main != skipped:
            raise ValueError(f"unsupported residual block at sequence length {length}: the convolutions "
                             f"give {main} positions, the skip projection {skipped}")
        self.out_length = main
        self.conv1 = _folded_conv(block.conv1, block.bn1)
        self.conv2 = _folded_conv(block.conv2, block.bn2)
        self.skip = _folded_conv(skip_conv, skip_bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.skip(x))


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
        conv = network.stem[0]
        if conv.in_channels != 1:
            raise ValueError(f"unsupported stem convolution {conv}: expected one input channel")
        # The sequence length is fixed by the feature count: static shapes keep the graph free of
        # shape arithmetic (only the cell axis is dynamic).
        self.n_features = int(network.n_features)
        length = _out_length(conv, self.n_features)
        if length < 1:
            raise ValueError(f"unsupported stem convolution {conv} for {self.n_features} features")
        self.stem = _folded_conv(conv, network.stem[1])
        blocks = []
        for block in network.blocks:
            blocks.append(_ImageBlock(block, length))
            length = blocks[-1].out_length
        self.blocks = nn.ModuleList(blocks)
        if network.lstm.input_size != (blocks[-1].conv2.out_channels if blocks else conv.out_channels):
            raise ValueError(f"LSTM input size {network.lstm.input_size} does not match the last convolution")
        self.steps = length
        self.lstm = _UnrolledLSTM(network.lstm)
        self.register_buffer("w_head", network.head.weight.detach().t().contiguous())
        self.register_buffer("b_head", network.head.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [cells, features] -> one image [1, 1, features, cells]: the cells are the image's width.
        h = torch.relu(self.stem(x.t().reshape(1, 1, self.n_features, -1)))
        for block in self.blocks:
            h = block(h)
        seq = h[0].permute(2, 1, 0)  # [channels, positions, cells] -> [cells, positions, channels]
        last = self.lstm(seq, self.steps)
        return (torch.matmul(last, self.w_head) + self.b_head).squeeze(-1)


def fast_form(network: nn.Module) -> nn.Module:
    """The same function as `network` (a ResNetLSTM in eval mode), built from its current weights
    in the fast inference form (see the module docstring: the batch as one image for the
    convolutions, BatchNorm folded, the LSTM unrolled). The result holds copies of the weights:
    later changes to `network` do not reach it."""
    if not isinstance(network, ResNetLSTM):
        raise TypeError(f"fast_form needs a ResNetLSTM, got {type(network).__name__}")
    if network.training:
        raise ValueError("fast_form folds BatchNorm's running statistics: put the network in eval mode first")
    with torch.no_grad():
        return FastResNetLSTM(network).eval()


def flops_per_cell(network: ResNetLSTM) -> int:
    """Floating-point operations (2 per multiply-add) of one cell through `network`, counted from
    its layer shapes: every convolution tap over its output positions (padding taps included: the
    network's count; a direct convolution that skips the zero taps does slightly less), the LSTM's
    input and recurrent products at every step, the head. BatchNorm, biases and activations are
    left out (elementwise, well under 1 %)."""
    stem = network.stem[0]
    length = _out_length(stem, network.n_features)
    macs = length * stem.out_channels * stem.in_channels * stem.kernel_size[0]
    for block in network.blocks:
        out_length = _out_length(block.conv1, length)
        for conv in (block.conv1, block.conv2, block.skip[0]):
            macs += out_length * conv.out_channels * conv.in_channels * conv.kernel_size[0]
        length = out_length
    lstm = network.lstm
    for layer in range(lstm.num_layers):
        inputs = lstm.input_size if layer == 0 else lstm.hidden_size
        macs += length * 4 * lstm.hidden_size * (inputs + lstm.hidden_size)
    macs += network.head.in_features * network.head.out_features
    return 2 * macs
