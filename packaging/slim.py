"""Make the Linux bundle smaller without taking away anything Cleo uses. Called by `cleo.spec`.

Three savings, each checked by the frozen smoke test (`cleo --smoke-test`):
- `drop_unreached`: PyInstaller collects the libraries of every Qt plugin before the spec drops
  the plugins Cleo never loads (GTK theme, eglfs, VNC...), so their libraries (GTK, cairo,
  pango, Kerberos, QtNetwork: ~12 MB) would ship although nothing left links to them.
- `slim_icu_data`: the PySide6 wheel's QtCore links ICU, whose data library is 31 MB. Qt calls
  ICU only for collation (QCollator: file dialogs sort names with it), case mapping, time-zone
  display names and legacy text codecs; Cleo shows no time-zone names and reads only UTF-8.
  Keeping the collation data alone gives a 3 MB library; the rest (locale formats, break
  dictionaries, transliteration, 5 MB of codec tables) is dropped.
- `identical_as_symlinks`: llama-cpp-python's wheel holds each library twice (libx.so and its
  soname libx.so.0), since wheels cannot hold symlinks.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import struct
import subprocess
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path, PurePosixPath

# PyInstaller's table-of-contents entry: (name in the bundle, source path, type).
Entry = tuple[str, str, str]

# Folders where PyInstaller puts libraries it found as dependencies (not plugins or modules).
_DEPENDENCY_FOLDERS = {".", "PySide6/Qt/lib"}
# The bootloader dlopens Python's library by name, so nothing lists it as needed.
_LOADED_BY_NAME = ("libpython",)

# ICU data items kept (names inside the package, e.g. "icudt73l/coll/root.res"): collation, the
# root tables and every language's tailoring. Qt's other uses of ICU need no data (case mapping
# is built into libicuuc) or are ones Cleo never makes (time-zone display names, legacy codecs).
ICU_KEEP = re.compile(r"^[^/]+/coll/[^/]+$")


def needed_libraries(path: str | Path) -> set[str]:
    """The DT_NEEDED names of an ELF file (what the dynamic linker loads with it)."""
    out = subprocess.run(["readelf", "-d", "-W", str(path)], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out))


def drop_unreached(binaries: list[Entry]) -> list[Entry]:
    """`binaries` without the dependency libraries that no kept binary needs any more."""
    needs = {src: needed_libraries(src) for _, src, kind in binaries if kind in ("BINARY", "EXTENSION")}

    def droppable(entry: Entry, wanted: set[str]) -> bool:
        name = PurePosixPath(entry[0])
        return (entry[2] == "BINARY" and str(name.parent) in _DEPENDENCY_FOLDERS
                and not name.name.startswith(_LOADED_BY_NAME) and name.name not in wanted)

    kept = list(binaries)
    while True:  # dropping one library can leave its own dependencies unused
        wanted = set().union(*(needs.get(src, set()) for _, src, _ in kept))
        unused = [e for e in kept if droppable(e, wanted)]
        if not unused:
            return kept
        kept = [e for e in kept if e not in unused]


def identical_as_symlinks(binaries: list[Entry], folder: str) -> list[Entry]:
    """Within `folder`, keep one copy of files with identical contents (the longest name, the
    soname) and make the others symlinks to it."""
    groups: dict[str, list[Entry]] = defaultdict(list)
    for entry in binaries:
        dest, src, kind = entry
        if kind == "BINARY" and str(PurePosixPath(dest).parent) == folder:
            groups[hashlib.sha256(Path(src).read_bytes()).hexdigest()].append(entry)
    links: dict[str, Entry] = {}
    for same in groups.values():
        keep = max(same, key=lambda e: len(e[0]))
        for dest, _, _ in same:
            if dest != keep[0]:
                links[dest] = (dest, PurePosixPath(keep[0]).name, "SYMLINK")
    return [links.get(entry[0], entry) for entry in binaries]


def slim_icu_data(library: Path, workdir: Path) -> Path:
    """Build a copy of ICU's data library (libicudata.so.NN) holding only `ICU_KEEP`; returns
    its path. Needs a C compiler (as the llama.cpp build does)."""
    symbol, package = _data_symbol(library)
    small = repack_icu_data(package, lambda name: bool(ICU_KEEP.match(name)))
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "icudata.dat"
    data.write_bytes(small)
    source = workdir / "icudata.S"
    # The library is nothing but the data package, exported under ICU's symbol name.
    source.write_text(f"""    .section .rodata
    .globl {symbol}
    .type {symbol}, @object
    .balign 16
{symbol}:
    .incbin "{data}"
    .size {symbol}, . - {symbol}
    .section .note.GNU-stack,"",@progbits
""")
    out = workdir / library.name
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("No C compiler (cc) found: it is needed to build the small ICU data library.")
    subprocess.run([compiler, "-shared", "-nostdlib", "-o", str(out), f"-Wl,-soname,{library.name}",
                    "-Wl,-z,noexecstack", str(source)], check=True)
    return out


def _data_symbol(library: Path) -> tuple[str, bytes]:
    """The name and bytes of the one data object an ICU data library exports."""
    symbols = subprocess.run(["readelf", "--dyn-syms", "-W", str(library)],
                             capture_output=True, text=True, check=True).stdout
    found = re.search(r":\s+([0-9a-f]+)\s+(0x[0-9a-f]+|\d+)\s+OBJECT\s+GLOBAL\s+\w+\s+(\d+)\s+(icudt\d+_dat)",
                      symbols)
    if found is None:
        raise SystemExit(f"{library} does not export ICU's data symbol (icudtNN_dat).")
    address, size, section = int(found[1], 16), int(found[2], 0), int(found[3])
    sections = subprocess.run(["readelf", "-S", "-W", str(library)], capture_output=True, text=True,
                              check=True).stdout
    row = re.search(rf"\[\s*{section}\]\s+\S+\s+\S+\s+([0-9a-f]+)\s+([0-9a-f]+)", sections)
    if row is None:
        raise SystemExit(f"{library}: cannot find section {section} of ICU's data symbol.")
    offset = address - int(row[1], 16) + int(row[2], 16)
    with library.open("rb") as f:
        f.seek(offset)
        return found[4], f.read(size)


def icu_items(package: bytes) -> dict[str, bytes]:
    """The items of an ICU common-data package ("CmnD"), by name, in the package's order."""
    header_size = struct.unpack_from("<H", package, 0)[0]
    # MappedData (size, magic 0xda27) then UDataInfo: byte 8 is big-endian?, bytes 12-16 the format.
    if package[2:4] != b"\xda\x27" or package[8] != 0 or package[12:16] != b"CmnD":
        raise ValueError("not an ICU common-data package (CmnD, little-endian)")
    count = struct.unpack_from("<I", package, header_size)[0]
    toc = [struct.unpack_from("<II", package, header_size + 4 + 8 * i) for i in range(count)]
    items = {}
    for i, (name_at, data_at) in enumerate(toc):
        start = header_size + name_at
        name = package[start:package.index(b"\0", start)].decode("ascii")
        end = header_size + toc[i + 1][1] if i + 1 < count else len(package)
        items[name] = package[header_size + data_at:end]
    return items


_PAD = b"\xaa"  # what ICU's own packager fills alignment gaps with


def repack_icu_data(package: bytes, keep: Callable[[str], bool]) -> bytes:
    """`package` with only the items whose name `keep(name)` accepts. The header is kept as it
    is; names stay sorted (ICU looks items up by binary search) and items 16-byte aligned."""
    header = package[:struct.unpack_from("<H", package, 0)[0]]
    items = {name: data for name, data in icu_items(package).items() if keep(name)}
    names = b"".join(name.encode("ascii") + b"\0" for name in items)
    table_size = 4 + 8 * len(items)
    data_start = -(-(table_size + len(names)) // 16) * 16
    toc, body, name_at = [struct.pack("<I", len(items))], bytearray(), table_size
    for name, data in items.items():
        toc.append(struct.pack("<II", name_at, data_start + len(body)))
        name_at += len(name) + 1
        body += data + _PAD * (-len(data) % 16)
    table = b"".join(toc) + names
    return header + table + _PAD * (data_start - len(table)) + bytes(body)
