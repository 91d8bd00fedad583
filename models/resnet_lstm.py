"""The ResNet-LSTM of the reference paper (Table 4).

The feature vector of one cell-day is read as a one-channel sequence [batch, 1, n_features]:
a Conv1D stem, four strided residual blocks that widen the channels (64, 128, 256, 512) while
halving the sequence, an LSTM over the remaining positions, and a dense head on its last state.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock1D(nn.Module):
    """Two 3-wide convolutions with a projected skip connection: y = relu(F(x) + P(x))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(out_channels)
        self.conv2 = nn.Conv1d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(out_channels)
        self.skip = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, 1, stride=stride, bias=False),
            nn.BatchNorm1d(out_channels),
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return self.relu(h + self.skip(x))


class ResNetLSTM(nn.Module):
    """Table 4: Conv1D 1->32, residual blocks 64/128/256/512 (stride 2), LSTM 128 x 2, dense."""

    def __init__(
        self,
        n_features: int,
        stem_channels: int = 32,
        block_channels: tuple[int, ...] = (64, 128, 256, 512),
        lstm_hidden: int = 128,
        lstm_layers: int = 2,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.n_features = n_features
        self.stem = nn.Sequential(
            nn.Conv1d(1, stem_channels, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm1d(stem_channels),
            nn.ReLU(),
        )
        blocks = []
        channels = stem_channels
        for out in block_channels:
            blocks.append(ResidualBlock1D(channels, out, stride=2))
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.lstm = nn.LSTM(
            channels, lstm_hidden, num_layers=lstm_layers, dropout=dropout, batch_first=True
        )
        self.head = nn.Linear(lstm_hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [batch, n_features] standardised features -> [batch] standardised target."""
        h = self.blocks(self.stem(x.unsqueeze(1)))  # [batch, channels, positions]
        out, _ = self.lstm(h.transpose(1, 2))  # the positions are the LSTM's steps
        return self.head(out[:, -1]).squeeze(-1)
