"""lmkit's benchmark suite: speed and memory, measured side by side (not tests; ``make bench``)."""
