"""tesseract-fl: Byzantine-robust federated learning with TESSERACT (flip-score reputation)."""

__version__ = "0.1.0"
