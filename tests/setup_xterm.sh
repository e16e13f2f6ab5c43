#!/usr/bin/env bash
# xterm.js for the console proxy's serial web terminal, from the npm registry: the
# package's tarball, checked against the integrity npm publishes for it, unpacked into
# /usr/local/share/hvmesh/xterm (the default of [console] xterm_dir). Debian's
# libjs-xterm is not usable in a browser (its xterm.js only requires modules it does not
# ship), and npm itself is not needed for one tarball. Safe to run again.
set -euo pipefail
version="5.5.0"
integrity="sha512-hqJHYaQb5OptNunnyAnkHyM8aCjZ1MEIDTQu1iIbbTD/xops91NB5yq1ZK/dC2JDbVWtF23zUtl9JE2NqwT87A=="
dest="${HVMESH_XTERM_DIR:-/usr/local/share/hvmesh/xterm}"
if [ -f "$dest/lib/xterm.js" ] && grep -qx "$version" "$dest/VERSION" 2>/dev/null; then
  exit 0
fi
python3 - "$version" "$integrity" "$dest" <<'PY'
import base64, hashlib, io, pathlib, shutil, sys, tarfile, urllib.request
version, integrity, dest = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
url = f"https://registry.npmjs.org/@xterm/xterm/-/xterm-{version}.tgz"
with urllib.request.urlopen(url, timeout=60) as r:
    data = r.read()
digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
if digest != integrity:
    sys.exit(f"setup_xterm: {url} does not match its published integrity")
tmp = dest.with_name(dest.name + ".tmp")
shutil.rmtree(tmp, ignore_errors=True)
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    # Only plain files and folders under package/ (Debian 12's Python has no extract filter).
    for member in tar.getmembers():
        parts = pathlib.PurePosixPath(member.name).parts
        if parts[:1] != ("package",) or ".." in parts or not (member.isfile() or member.isdir()):
            sys.exit(f"setup_xterm: unexpected entry {member.name!r} in {url}")
    tar.extractall(tmp)
package = tmp / "package"
(package / "VERSION").write_text(version + "\n")
shutil.rmtree(dest, ignore_errors=True)
dest.parent.mkdir(parents=True, exist_ok=True)
package.rename(dest)
shutil.rmtree(tmp, ignore_errors=True)
print(f"setup: xterm.js {version} in {dest}")
PY
