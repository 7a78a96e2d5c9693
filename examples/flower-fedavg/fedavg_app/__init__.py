"""A FedAvg Flower app defended by tesseract-fl (see README.md)."""
