#!/usr/bin/env bash
# Build the native TensorFlow backend for tfjs (@tensorflow/tfjs-node) from
# registry-only sources:
#   * the tfjs-node npm tarball (binding C++ sources + binding.gyp), and
#   * the libtensorflow_cc / libtensorflow_framework shared libraries and C API
#     headers shipped inside the tensorflow-cpu wheel on PyPI.
# Nothing is fetched from storage.googleapis.com or nodejs.org (tfjs-node's own
# install script downloads libtensorflow 2.9.1 from there; node-gyp downloads
# node headers from there).
#
# Result: node_modules/@tensorflow/tfjs-node with
#   lib/napi-v8/tfjs_binding.node   (RUNPATH $ORIGIN/../../deps/lib)
#   deps/lib/libtensorflow_cc.so.2, libtensorflow_framework.so.2 (+ symlinks)
# so that `require('@tensorflow/tfjs-node')` works from this repository.
#
# Usage: scripts/build-tfjs-node.sh [--no-install] [--no-verify]
#   --no-install  build under native/ only; do not touch node_modules
#   --no-verify   skip the matMul smoke test / benchmark
# Environment overrides:
#   TFJS_NODE_VERSION (4.22.0)  TF_VERSION (2.21.0)  TF_PIP_PACKAGE (auto)
#   NODEDIR (auto: node's install prefix, must contain include/node/node_api.h)
#   NODE_GYP_SPEC (node-gyp@11 via npx)  JOBS (nproc)
# Work files live in native/ (git-ignored via .git/info/exclude).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TFJS_NODE_VERSION="${TFJS_NODE_VERSION:-4.22.0}"
# @tensorflow/tfjs-node (CPU) or @tensorflow/tfjs-node-gpu (the same binding; pair it with TF_PIP_PACKAGE=tensorflow,
# whose libtensorflow is built with CUDA 12, for the `cuda` backend).
TFJS_NODE_PACKAGE="${TFJS_NODE_PACKAGE:-@tensorflow/tfjs-node}"
PKG_SLUG="$(echo "${TFJS_NODE_PACKAGE#@}" | tr / -)"
TF_VERSION="${TF_VERSION:-2.21.0}"
NODE_GYP_SPEC="${NODE_GYP_SPEC:-node-gyp@11}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
NAPI_VERSION=8
DO_INSTALL=1
DO_VERIFY=1
for arg in "$@"; do
  case "$arg" in
    --no-install) DO_INSTALL=0 ;;
    --no-verify) DO_VERIFY=0 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

NATIVE="$ROOT/native"
WORK="$NATIVE/work"
WHEELS="$NATIVE/wheels"
TFDIR="$NATIVE/tf-$TF_VERSION-${TF_PIP_PACKAGE:-auto}"
PKG="$WORK/package"

log() { printf '\n== %s\n' "$*"; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }
SECONDS=0

# Keep native/ out of git without touching the tracked .gitignore.
if [ -d "$ROOT/.git/info" ] && ! grep -qx '/native/' "$ROOT/.git/info/exclude" 2>/dev/null; then
  echo '/native/' >> "$ROOT/.git/info/exclude"
fi
mkdir -p "$WORK" "$WHEELS"

# ---------------------------------------------------------------- 0. checks
log "0. toolchain checks"
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) TF_PIP_PACKAGE="${TF_PIP_PACKAGE:-tensorflow-cpu}" ;;
  # tensorflow-cpu has no aarch64 wheels; the plain `tensorflow` wheel ships the
  # same libtensorflow_cc.so.2 layout (not tested here).
  Linux-aarch64) TF_PIP_PACKAGE="${TF_PIP_PACKAGE:-tensorflow}" ;;
  *) die "unsupported platform $(uname -s)-$(uname -m) (Linux x86_64/aarch64 only)" ;;
esac
missing=()
for tool in node npm g++ make python3 nm readelf; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
python3 -m pip --version >/dev/null 2>&1 || missing+=("pip")
if [ "${#missing[@]}" -gt 0 ]; then
  die "missing tools: ${missing[*]} (Debian: apt-get install -y g++ make python3 python3-pip binutils)"
fi
if [ -z "${NODEDIR:-}" ]; then
  node_prefix="$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")"
  for cand in "$node_prefix" /usr /usr/local; do
    if [ -f "$cand/include/node/node_api.h" ] && [ -f "$cand/include/node/common.gypi" ]; then
      NODEDIR="$cand"; break
    fi
  done
fi
[ -n "${NODEDIR:-}" ] && [ -f "$NODEDIR/include/node/node_api.h" ] \
  || die "node headers not found (need <NODEDIR>/include/node/node_api.h and common.gypi; Debian: apt-get install libnode-dev, or set NODEDIR)"
echo "platform=$(uname -m) pip package=$TF_PIP_PACKAGE==$TF_VERSION node=$(node -v) NODEDIR=$NODEDIR jobs=$JOBS"

# ------------------------------------------------- 1. tfjs-node sources (npm)
log "1. npm pack $TFJS_NODE_PACKAGE@$TFJS_NODE_VERSION"
TGZ="$WORK/$PKG_SLUG-$TFJS_NODE_VERSION.tgz"
if [ ! -f "$TGZ" ]; then
  (cd "$WORK" && npm pack --silent "$TFJS_NODE_PACKAGE@$TFJS_NODE_VERSION" >/dev/null)
fi
rm -rf "$PKG"
tar -xzf "$TGZ" -C "$WORK"
[ -f "$PKG/binding.gyp" ] || die "binding.gyp missing from $TGZ"

# ---------------------------------------------- 2. libtensorflow from PyPI
log "2. pip download $TF_PIP_PACKAGE==$TF_VERSION (wheel is only unzipped, never installed)"
WHEEL_PREFIX="$(echo "$TF_PIP_PACKAGE" | tr - _)"
WHEEL="$(ls "$WHEELS"/"$WHEEL_PREFIX"-"$TF_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
if [ -z "$WHEEL" ]; then
  # The wheel's Python tag is irrelevant (we only unzip it); take this
  # interpreter's wheel, which pip resolves by default.
  python3 -m pip download --no-deps --only-binary=:all: -d "$WHEELS" "$TF_PIP_PACKAGE==$TF_VERSION"
  WHEEL="$(ls "$WHEELS"/"$WHEEL_PREFIX"-"$TF_VERSION"-*.whl | head -n1)"
fi
echo "wheel: $WHEEL"
if [ ! -f "$TFDIR/.complete" ]; then
  rm -rf "$TFDIR"; mkdir -p "$TFDIR"
  python3 - "$WHEEL" "$TFDIR" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
want = ("tensorflow/libtensorflow_cc.so.2", "tensorflow/libtensorflow_framework.so.2")
n = 0
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        # the C/eager API headers and what they include (tensorflow/core/platform, tsl, ...)
        if name in want or name.startswith("tensorflow/include/"):
            z.extract(name, dest); n += 1
print(f"extracted {n} files")
for w in want:
    try:
        zipfile.ZipFile(wheel).getinfo(w)
    except KeyError:
        sys.exit(f"{w} not in wheel")
PY
  touch "$TFDIR/.complete"
fi

# ---------------------------------------------- 3. lay out deps/ for binding.gyp
log "3. deps/include + deps/lib layout"
mkdir -p "$PKG/deps/lib"
ln -sfn "$TFDIR/tensorflow/include" "$PKG/deps/include"
for so in libtensorflow_cc.so.2 libtensorflow_framework.so.2; do
  ln -f "$TFDIR/tensorflow/$so" "$PKG/deps/lib/$so" 2>/dev/null || cp -f "$TFDIR/tensorflow/$so" "$PKG/deps/lib/$so"
done
# binding.gyp links -ltensorflow -ltensorflow_framework. The TF/TFE C API lives
# in libtensorflow_cc.so.2 (TF_NewTensor & co. in libtensorflow_framework.so.2).
ln -sfn libtensorflow_cc.so.2 "$PKG/deps/lib/libtensorflow.so.2"
ln -sfn libtensorflow.so.2 "$PKG/deps/lib/libtensorflow.so"
ln -sfn libtensorflow_framework.so.2 "$PKG/deps/lib/libtensorflow_framework.so"
# Every TF_*/TFE_* function the binding calls must be exported by one of the two.
used="$(grep -ohE '\bTFE?_[A-Z][A-Za-z0-9]+\(' "$PKG"/binding/*.cc "$PKG"/binding/*.h | tr -d '(' \
        | grep -vE '^(TF_AutoStatus|TF_AutoTensor|TFE_AutoOp)$' | sort -u)"
exported="$( { nm -D --defined-only "$PKG/deps/lib/libtensorflow_cc.so.2"; \
               nm -D --defined-only "$PKG/deps/lib/libtensorflow_framework.so.2"; } \
             | awk '{print $3}' | sed 's/@.*//' | sort -u)"
unresolved="$(comm -23 <(echo "$used") <(echo "$exported"))"
[ -z "$unresolved" ] || die "C API symbols used by the binding but not exported: $unresolved"
echo "all $(echo "$used" | wc -l) TF_/TFE_ functions used by the binding are exported"

# ---------------------------------------------- 4. node-gyp build (offline headers)
log "4. node-gyp rebuild ($NODE_GYP_SPEC, --nodedir=$NODEDIR)"
(
  cd "$PKG"
  npx --yes "$NODE_GYP_SPEC" rebuild \
    --nodedir="$NODEDIR" \
    --module_name=tfjs_binding \
    --module_path="$PKG/lib/napi-v$NAPI_VERSION" \
    --napi_build_version="$NAPI_VERSION" \
    --jobs="$JOBS"
)
BINDING="$PKG/lib/napi-v$NAPI_VERSION/tfjs_binding.node"
[ -f "$BINDING" ] || die "build produced no $BINDING"
readelf -d "$BINDING" | grep -E 'NEEDED|RUNPATH|RPATH'
if ldd "$BINDING" | grep -q 'not found'; then ldd "$BINDING"; die "unresolved shared libraries"; fi

# ---------------------------------------------- 5. install into node_modules
if [ "$DO_INSTALL" = 1 ]; then
  log "5. install into $ROOT/node_modules/$TFJS_NODE_PACKAGE"
  DEST="$ROOT/node_modules/$TFJS_NODE_PACKAGE"
  have="$(node -p "try{require('$DEST/package.json').version}catch(e){''}" 2>/dev/null || true)"
  if [ "$have" != "$TFJS_NODE_VERSION" ]; then
    # --ignore-scripts: the package's install script would try to download
    # libtensorflow 2.9.1 from storage.googleapis.com. --no-save: leave
    # package.json / package-lock.json alone.
    (cd "$ROOT" && npm install --no-save --ignore-scripts --no-audit --no-fund \
        "$TFJS_NODE_PACKAGE@$TFJS_NODE_VERSION")
  fi
  mkdir -p "$DEST/lib/napi-v$NAPI_VERSION" "$DEST/deps/lib"
  cp -f "$BINDING" "$DEST/lib/napi-v$NAPI_VERSION/tfjs_binding.node"
  for so in libtensorflow_cc.so.2 libtensorflow_framework.so.2; do
    rm -f "$DEST/deps/lib/$so"
    ln "$PKG/deps/lib/$so" "$DEST/deps/lib/$so" 2>/dev/null || cp -f "$PKG/deps/lib/$so" "$DEST/deps/lib/$so"
  done
  ln -sfn libtensorflow_cc.so.2 "$DEST/deps/lib/libtensorflow.so.2"
  ln -sfn libtensorflow_framework.so.2 "$DEST/deps/lib/libtensorflow_framework.so"
fi

# ---------------------------------------------- 6. verify
if [ "$DO_INSTALL" = 1 ] && [ "$DO_VERIFY" = 1 ]; then
  log "6. verify"
  (
    cd "$ROOT"
    export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
    node -e "
const tf = require('$TFJS_NODE_PACKAGE');
const b = tf.getBackend();
console.log('backend', b, 'libtensorflow', tf.backend().binding.TF_Version);
if (b !== 'tensorflow') { console.error('expected the tensorflow backend'); process.exit(1); }
for (const [n, iters] of [[512, 20], [2048, 5]]) {
  const a = tf.randomNormal([n, n]);
  tf.matMul(a, a).dataSync();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < iters; i++) { const c = tf.matMul(a, a); c.dataSync(); c.dispose(); }
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(n + 'x' + n + ' matMul: ' + (2 * n ** 3 * iters / s / 1e9).toFixed(1) + ' GFLOP/s');
  a.dispose();
}"
  )
fi
log "done in ${SECONDS}s"
