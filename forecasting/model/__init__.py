"""The model: the LSTM, scaling, windows, training and inference, the model registry."""
