"""Compression on the Fly Lab: the core (no streamlit here).

Train small networks with a binarizing regularizer on their FC layers, compress those layers
with product quantization, and count every bit. See docs/method.md.
"""
