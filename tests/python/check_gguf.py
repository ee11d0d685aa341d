"""Reads GGUF files with the `gguf` package (llama.cpp's gguf-py) and prints, per file, its
metadata keys and, per tensor, its type, shape and checksums of the dequantized values, as JSON.

Usage: check_gguf.py FILE [FILE ...]
"""
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def describe(path):
    r = GGUFReader(path)
    tensors = {}
    for t in r.tensors:
        x = dequantize(t.data, t.tensor_type).astype(np.float64).ravel()
        tensors[t.name] = {
            "type": t.tensor_type.name,
            "shape": [int(d) for d in t.shape],
            "n": int(x.size),
            "sum": float(x.sum()),
            "abssum": float(np.abs(x).sum()),
            "nonfinite": int((~np.isfinite(x)).sum()),
        }
    keys = [f.name for f in r.fields.values()]
    return {"keys": keys, "tensors": tensors}


if __name__ == "__main__":
    print(json.dumps({p: describe(p) for p in sys.argv[1:]}))
