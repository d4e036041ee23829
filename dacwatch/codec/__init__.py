"""The mathematics: loading DAC networks, the exact chunked codec and its window plan, the CPU kernels,
the device gate, and the quality figure. Knows nothing of files on disk, the daemon or the queue."""
