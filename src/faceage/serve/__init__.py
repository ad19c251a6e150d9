"""`faceage serve`: a private local web page and HTTP API over a model (FastAPI + uvicorn)."""
