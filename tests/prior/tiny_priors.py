"""Small sizes of each architecture for tests (several test files share them)."""

# tiny widths so the whole file runs in well under two minutes on one core; an architecture not listed here runs
# with its defaults, which must work on any grid (API: "down to a 2x3 grid with a 3-token vocabulary")
TINY = {
    "transformer": dict(n_layer=2, n_head=2, d_model=16),
    "sparse_transformer": dict(n_layer=2, n_head=2, d_model=16),
    "wavenet": dict(residual_channels=8, skip_channels=8, dilation_cycle=3, n_cycles=1),
    "pixelcnn": dict(pixelcnn_layers=4, pixelcnn_channels=8),
    "made": dict(made_hidden=(32, 32)),
    "lstm": dict(lstm_hidden=16, lstm_layers=2),
    "histogram": dict(),
    "ngram": dict(),
}
