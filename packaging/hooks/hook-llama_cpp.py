# llama-cpp-python loads libllama and the ggml backends with ctypes from llama_cpp/lib at run
# time; PyInstaller cannot see those loads, so the libraries are collected explicitly, under the
# names the loader and the libraries' own links use (libx.so and its soname libx.so.0; the spec
# makes one a symlink to the other), not again under the full version (libx.so.0.25.3).
# libmtmd (images and audio for multimodal models) is loaded only by llama-cpp-python's
# multimodal chat handlers, which Cleo does not use.
import re

from PyInstaller.utils.hooks import collect_dynamic_libs

binaries = [(src, dest) for src, dest in collect_dynamic_libs("llama_cpp")
            if not re.search(r"\.so\.\d+\.\d+", src) and "mtmd" not in src]
