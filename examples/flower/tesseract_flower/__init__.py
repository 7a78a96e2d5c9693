"""tesseract-fl on Flower: the example ServerApp and ClientApp (README "Deploy with Flower")."""
