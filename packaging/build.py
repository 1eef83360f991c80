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
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
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
        _strip_python(DIST / "Cleo" / "_internal")
    app = _frozen_executable()
    smoke_test(app)
    if args.no_archive:
        return 0
    if sys.platform.startswith("linux"):
        _linux_package(version)
    elif sys.platform == "darwin":
        _macos_package(version)
    elif sys.platform == "win32":
        shutil.make_archive(str(DIST / f"Cleo-{version}-windows-{platform.machine().lower()}"), "zip", DIST, "Cleo")
    return 0


def _strip_python(internal: Path) -> None:
    """Drop the debug symbols of Python's own library and extension modules (~25 MB when Python was
    built with them). Only these: stripping numpy's OpenBLAS corrupts it (FACTS.md)."""
    strip = shutil.which("strip")
    if strip is None:
        print("strip not found: the bundle keeps Python's debug symbols")
        return
    targets = [*internal.glob("libpython3*.so*"), *internal.glob("python3*/lib-dynload/*.so")]
    subprocess.run([strip, "--strip-debug", *map(str, targets)], check=True)


def _frozen_executable() -> Path:
    if sys.platform == "darwin":
        return DIST / "Cleo.app" / "Contents" / "MacOS" / "cleo"
    return DIST / "Cleo" / ("cleo.exe" if sys.platform == "win32" else "cleo")


def smoke_test(app: Path) -> None:
    """Run the frozen app's smoke test with a clean environment; raise on failure or stray stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEO_", "PYTHON", "QT_"))}
    result = subprocess.run([str(app), "--smoke-test"], capture_output=True, text=True, env=env, timeout=600)
    print(result.stdout.strip())
    if result.returncode != 0 or result.stderr.strip():
        raise SystemExit(f"smoke test of {app} failed (exit {result.returncode}); stderr:\n{result.stderr}")


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
