# sqlite-vec's extension (vec0.so / .dylib / .dll) is loaded by SQLite from the package folder;
# its name does not look like a library to PyInstaller, so it is listed by hand.
from pathlib import Path

import sqlite_vec

binaries = [(str(p), "sqlite_vec") for p in Path(sqlite_vec.__file__).parent.glob("vec0.*")]
