"""File formats: safetensors models and checkpoints, datasets (.npz, .npy, .csv, IDX). No Numba."""
