"""ecgtl: transfer learning for ECG classification (Weimann & Conrad, Sci Rep 2021, reproduced in PyTorch)."""

__version__ = "0.1.0"
