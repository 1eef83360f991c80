"""Build Cleo's double-click app for this OS, smoke-test it, and package it: `make bundle`.

    python packaging/build.py [--no-archive]

1. PyInstaller with `packaging/cleo.spec` (one folder, the default models inside) -> dist/Cleo
   (dist/Cleo.app on macOS).
2. `cleo --smoke-test` on the frozen app; a non-zero exit or anything on stderr fails the build.
3. Per OS: Linux gets the .desktop file and icon beside the app and a tarball; macOS is signed
   and notarised when CLEO_CODESIGN_IDENTITY (and CLEO_NOTARY_PROFILE, a `notarytool`
   keychain profile) are set, skipped otherwise, then put in a dmg; Windows gets a zip.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "dist"
WORK = ROOT / "build" / "pyinstaller"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-archive", action="store_true", help="build and smoke-test only (CI)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from engine.paths import default_chat_model, default_embedding_model

    models = [default_chat_model(), default_embedding_model()]
    missing = [str(m) for m in models if not m.is_file()]
    if missing:
        print(f"The default models are missing ({', '.join(missing)}): run `make models` first.", file=sys.stderr)
        return 1
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    env = {**os.environ, "CLEO_VERSION": version, "CLEO_BUNDLE_MODELS": os.pathsep.join(map(str, models))}
    if sys.platform == "win32":
        env["CLEO_VERSION_FILE"] = str(_windows_version_file(version))

    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--log-level", "WARN",
                    "--distpath", str(DIST), "--workpath", str(WORK), str(ROOT / "packaging" / "cleo.spec")],
                   check=True, env=env, cwd=ROOT)
    print(f"built in {time.monotonic() - start:.0f} s")
    if sys.platform.startswith("linux"):
        _strip_symbols(DIST / "Cleo" / "_internal")
    app = _frozen_executable()
    smoke_test(app, _install_folder())
    if sys.platform.startswith("linux"):
        window_test(app)
    if args.no_archive:
        return 0
    if sys.platform.startswith("linux"):
        _linux_package(version)
    elif sys.platform == "darwin":
        _macos_package(version)
    elif sys.platform == "win32":
        shutil.make_archive(str(DIST / f"Cleo-{version}-windows-{platform.machine().lower()}"), "zip", DIST, "Cleo")
    return 0


def _strip_symbols(internal: Path) -> None:
    """Drop symbol tables and debug info, which nothing at run time reads (~11 MB: sqlean and
    PyYAML ship debug info, ICU and Python their symbol tables). Not numpy's files: auditwheel
    rewrote them with patchelf, and strip corrupts its OpenBLAS (docs/ARCHITECTURE.md, facts)."""
    strip = shutil.which("strip")
    if strip is None:
        print("strip not found: the bundle keeps its libraries' symbols")
        return
    targets = [path for path in internal.rglob("*.so*")
               if path.is_file() and not path.is_symlink() and not {"numpy", "numpy.libs"} & set(path.parts)
               and _has_symbols(path)]
    subprocess.run([strip, "--strip-unneeded", *map(str, targets)], check=True)


def _has_symbols(library: Path) -> bool:
    sections = subprocess.run(["readelf", "-S", "-W", str(library)], capture_output=True, text=True).stdout
    return any(name in sections for name in (" .symtab ", " .debug_info "))


def _install_folder() -> Path:
    return DIST / ("Cleo.app" if sys.platform == "darwin" else "Cleo")


def _frozen_executable() -> Path:
    if sys.platform == "darwin":
        return DIST / "Cleo.app" / "Contents" / "MacOS" / "cleo"
    return DIST / "Cleo" / ("cleo.exe" if sys.platform == "win32" else "cleo")


def smoke_test(app: Path, install: Path) -> None:
    """Run the frozen app's smoke test with a clean environment and its install folder read-only
    (as under /opt or Program Files); raise on failure, on stray stderr, or if the app wrote
    anything into the install folder (all data belongs in the user's folders)."""
    env = _clean_environment()
    before = _snapshot(install)
    with _read_only(install):
        result = subprocess.run([str(app), "--smoke-test"], capture_output=True, text=True, env=env, timeout=600)
    print(result.stdout.strip())
    if result.returncode != 0 or result.stderr.strip():
        raise SystemExit(f"smoke test of {app} failed (exit {result.returncode}); stderr:\n{result.stderr}")
    written = sorted({p for p, _ in set(before.items()) ^ set(_snapshot(install).items())})
    if written:
        raise SystemExit(f"the smoke test wrote into the install folder {install}: {', '.join(written[:10])}")


def window_test(app: Path) -> None:
    """Open the frozen app's window on a real X server (Xvfb) rather than Qt's offscreen
    platform: this is what finds an xcb plugin whose libraries the bundle lacks, which no
    offscreen run can (Qt then aborts before the window exists)."""
    xvfb_run = shutil.which("xvfb-run")
    if xvfb_run is None:
        print("xvfb-run not found: the window was not opened on X11 (install xvfb to check it)")
        return
    with tempfile.TemporaryDirectory(prefix="cleo-window-") as home:
        env = {**_clean_environment(), "CLEO_HOME": home, "CLEO_QUIT_AFTER_FIRST_PAINT": "1"}
        result = subprocess.run([xvfb_run, "-a", "-s", "-screen 0 1280x800x24", str(app)], capture_output=True,
                                text=True, env=env, timeout=120)
    if result.returncode != 0 or "painted" not in result.stdout.split():
        raise SystemExit(f"{app} did not open its window on X11 (exit {result.returncode}); stderr:\n{result.stderr}")
    print("window opened and painted on X11 (Xvfb)")


def _clean_environment() -> dict[str, str]:
    """This environment without Cleo's, Python's and Qt's variables: the frozen app as a user starts it."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("CLEO_", "PYTHON", "QT_"))}


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (st.st_size, st.st_mtime_ns)
            for p in folder.rglob("*") for st in [p.lstat()]}


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """Take away write permission under `folder` for the duration (root ignores it; the snapshot
    comparison in `smoke_test` still catches writes there)."""
    modes = {p: p.lstat().st_mode for p in [folder, *folder.rglob("*")] if not p.is_symlink()}
    for path, mode in modes.items():
        path.chmod(stat.S_IMODE(mode) & ~0o222)
    try:
        yield
    finally:
        for path, mode in modes.items():
            path.chmod(stat.S_IMODE(mode))


def _linux_package(version: str) -> None:
    bundle = DIST / "Cleo"
    shutil.copy(ROOT / "packaging" / "linux" / "cleo.desktop", bundle / "cleo.desktop")
    shutil.copy(ROOT / "packaging" / "icons" / "cleo.png", bundle / "cleo.png")
    archive = DIST / f"Cleo-{version}-linux-{platform.machine()}.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=6) as tar:
        tar.add(bundle, arcname=f"Cleo-{version}")
    print(f"wrote {archive} ({archive.stat().st_size / 2**20:.0f} MB)")


def _macos_package(version: str) -> None:
    app = DIST / "Cleo.app"
    identity = os.environ.get("CLEO_CODESIGN_IDENTITY")
    if identity:
        entitlements = ROOT / "packaging" / "macos" / "entitlements.plist"
        subprocess.run(["codesign", "--force", "--deep", "--options", "runtime", "--timestamp",
                        "--entitlements", str(entitlements), "--sign", identity, str(app)], check=True)
    else:
        print("CLEO_CODESIGN_IDENTITY is not set: the app is not signed (Gatekeeper will ask users to confirm).")
    dmg = DIST / f"Cleo-{version}-macos-{platform.machine()}.dmg"
    dmg.unlink(missing_ok=True)
    subprocess.run(["hdiutil", "create", "-volname", "Cleo", "-srcfolder", str(app), "-ov", "-format", "UDZO",
                    str(dmg)], check=True)
    profile = os.environ.get("CLEO_NOTARY_PROFILE")
    if identity and profile:
        subprocess.run(["codesign", "--sign", identity, "--timestamp", str(dmg)], check=True)
        subprocess.run(["xcrun", "notarytool", "submit", str(dmg), "--keychain-profile", profile, "--wait"],
                       check=True)
        subprocess.run(["xcrun", "stapler", "staple", str(dmg)], check=True)
    else:
        print("CLEO_NOTARY_PROFILE is not set (or the app is unsigned): notarisation skipped.")
    print(f"wrote {dmg}")


def _windows_version_file(version: str) -> Path:
    numbers = ", ".join((version.split(".") + ["0"] * 4)[:4])
    path = WORK / "version_info.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    strings = {"CompanyName": "Cleo", "FileDescription": "Cleo, a private AI assistant", "FileVersion": version,
               "ProductName": "Cleo", "ProductVersion": version, "OriginalFilename": "cleo.exe",
               "LegalCopyright": "The Cleo authors"}
    entries = ",\n".join(f"          StringStruct('{k}', '{v}')" for k, v in strings.items())
    path.write_text(f"""VSVersionInfo(
  ffi=FixedFileInfo(filevers=({numbers}), prodvers=({numbers}), mask=0x3f, flags=0x0, OS=0x40004,
                    fileType=0x1, subtype=0x0, date=(0, 0)),
  kids=[
    StringFileInfo([StringTable('040904B0', [
{entries}])]),
    VarFileInfo([VarStruct('Translation', [1033, 1200])])
  ]
)
""", encoding="utf-8")
    return path


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
