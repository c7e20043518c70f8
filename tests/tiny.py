"""The tiny settings the tests share: a fast run on the 8x8 digits (1,437 training images)."""

TINY = dict(dataset="digits", model="mlp", hidden=(32, 16), epochs=2, lr=3e-3, batch_size=64, seed=0)

# The page tests' runs (tests/conftest.py's lab store): the same at the default learning rate.
PAGE_TINY = dict(dataset="digits", model="mlp", hidden=(32, 16), epochs=2, batch_size=64, seed=0)
