"""The network: U-Net, loss, augmentation, training data, checkpoints and overlap-tile prediction in memory."""
