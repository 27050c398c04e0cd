"""Runs for people to look at: the runs table, the training curves as a picture, sparklines.
Reads run directories only (through io.RunDir); never imports Numba or the trainer."""
