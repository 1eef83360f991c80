"""Model files: the GGUF header reader, the catalog of local models, downloads and the memory fit."""
