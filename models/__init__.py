"""The ResNet-LSTM, its training, evaluation and ONNX export."""
