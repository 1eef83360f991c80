"""llama.cpp: the only subpackage that imports `llama_cpp`.

Loading GGUF files (`llama`), chat models (`chat_model`), sampling, the embedder, chat templates
and the processor check.
"""
