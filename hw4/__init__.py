"""hw4: VAEs and DDPMs for Fashion-MNIST and MNIST, in plain PyTorch (no Ray here)."""
