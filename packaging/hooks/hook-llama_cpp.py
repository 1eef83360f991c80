# llama-cpp-python loads libllama and the ggml backends with ctypes from llama_cpp/lib at run
# time; PyInstaller cannot see those loads, so the libraries are collected explicitly. Each is
# collected once under the names the loader and the libraries' own links use (libx.so and its
# soname libx.so.0), not again under the full version (libx.so.0.25.3): symlinks become copies.
import re

from PyInstaller.utils.hooks import collect_dynamic_libs

binaries = [(src, dest) for src, dest in collect_dynamic_libs("llama_cpp")
            if not re.search(r"\.so\.\d+\.\d+", src)]
