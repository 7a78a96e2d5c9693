"""tesseract-fl on Flower: the example ServerApp and ClientApp (docs/flower.md)."""
