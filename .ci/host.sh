#!/usr/bin/env bash
# Prepare a CPU ComfyUI host for the pack's host tests: ComfyUI's source in DIR/ComfyUI, a venv in DIR/venv
# with torch pinned, ComfyUI's requirements and the test tools (pytest, playwright).
#
#   bash .ci/host.sh SOURCE [DIR]        DIR defaults to .host (git-ignored)
#
# SOURCE is a ComfyUI source archive (.tar.gz whose top folder is ComfyUI/, e.g.
# ../shared/vendor/comfyui-0.3.64.tar.gz), a ComfyUI checkout (a folder), or a git URL (cloned at COMFYUI_REF,
# default v0.3.64; needs network). A host that is already current for the same source, torch and this script
# is reused as it is (a few seconds); anything else is rebuilt from scratch.
#
# Environment: TORCH_VERSION (default 2.13.0, the CPU build this project's machines hold; elsewhere add
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu to get a CPU build), PYTHON (default python3).
#
# torchvision: ComfyUI imports it at start-up (comfy.model_base, comfy.sd) but SD1.x/SD2.x/SDXL never use it,
# and no torchvision build works with the CPU torch here, so an importable stand-in goes on the venv's path.
# It raises on any use; the optional ComfyUI nodes that need it (upscale models) fail to import, which ComfyUI
# logs and survives. The pack itself needs neither torchvision nor torchaudio.
set -euo pipefail

source_arg=${1:?usage: bash .ci/host.sh SOURCE [DIR]  (SOURCE: ComfyUI .tar.gz, checkout folder or git URL)}
dir=${2:-.host}
torch_version=${TORCH_VERSION:-2.13.0}
python=${PYTHON:-python3}
ref=${COMFYUI_REF:-v0.3.64}
here=$(cd "$(dirname "$0")" && pwd)

fail() { echo "host.sh: $*" >&2; exit 1; }

case "$source_arg" in
  *.tar.gz|*.tgz) [ -f "$source_arg" ] || fail "no ComfyUI archive at $source_arg"
                  kind=archive; identity="archive $(sha256sum "$source_arg" | cut -d' ' -f1)" ;;
  http*://*|git@*|*.git) kind=url; identity="git $source_arg@$ref" ;;
  *) [ -f "$source_arg/main.py" ] && [ -d "$source_arg/comfy" ] || fail "$source_arg is not a ComfyUI checkout"
     kind=checkout
     identity="checkout $(cd "$source_arg" && pwd)"
     if [ "$(git -C "$source_arg" rev-parse --show-toplevel 2>/dev/null)" = "$(cd "$source_arg" && pwd)" ]; then
       identity="$identity at $(git -C "$source_arg" rev-parse HEAD)"
     fi ;;
esac
stamp="$identity; torch $torch_version; script $(sha256sum "$here/host.sh" | cut -d' ' -f1)"

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [ -f "$dir/stamp" ] && [ "$(cat "$dir/stamp")" = "$stamp" ] && [ -x "$dir/venv/bin/python" ]; then
  echo "host.sh: $dir is current ($identity), reused"
  exit 0
fi
echo "host.sh: building $dir from $identity"
rm -rf "$dir/ComfyUI" "$dir/venv" "$dir/stamp"

case "$kind" in
  archive)  tar -xzf "$source_arg" -C "$dir"
            [ -f "$dir/ComfyUI/main.py" ] || fail "$source_arg has no ComfyUI/main.py" ;;
  url)      git clone -q --depth 1 --branch "$ref" "$source_arg" "$dir/ComfyUI" ;;
  checkout) mkdir "$dir/ComfyUI"
            if [ "$(git -C "$source_arg" rev-parse --show-toplevel 2>/dev/null)" = "$(cd "$source_arg" && pwd)" ]; then
              git -C "$source_arg" archive HEAD | tar -x -C "$dir/ComfyUI"
            else
              cp -a "$source_arg/." "$dir/ComfyUI/"
            fi ;;
esac

"$python" -m venv "$dir/venv"
pip_install() {  # quiet; this machine's pip configuration warns about absent local indexes on every call
  "$dir/venv/bin/python" -m pip --disable-pip-version-check -q install "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
  return "${PIPESTATUS[0]}"
}
echo "torch==$torch_version" > "$dir/constraints.txt"
pip_install "torch==$torch_version"
# torch comes pinned above; torchvision/torchaudio have no working CPU build here; spandrel declares torchvision.
grep -v -E '^[[:space:]]*(torch|torchvision|torchaudio|spandrel)[[:space:]]*([<>=!~;#].*)?$' \
  "$dir/ComfyUI/requirements.txt" > "$dir/requirements.txt"
pip_install -r "$dir/requirements.txt" -c "$dir/constraints.txt"
# The server imports requests without listing it; spandrel goes in without its torchvision requirement.
pip_install requests pytest playwright -c "$dir/constraints.txt"
pip_install --no-deps "$(grep -E '^[[:space:]]*spandrel' "$dir/ComfyUI/requirements.txt" | head -1 | tr -d '[:space:]')"

site=$("$dir/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if ! "$dir/venv/bin/python" -c "import torchvision" 2>/dev/null; then
  # ComfyUI imports torchvision, torchvision.transforms and torchvision.transforms.functional by name.
  for module in __init__ transforms/__init__ transforms/functional; do
    mkdir -p "$(dirname "$dir/shims/torchvision/$module")"
    cat > "$dir/shims/torchvision/$module.py" <<'EOF'
"""Stand-in torchvision for a CPU ComfyUI test host (written by the pack's .ci/host.sh): importable, but any
attribute raises AttributeError, so `from torchvision... import name` fails as a missing name would."""


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise AttributeError(f"{__name__}.{name}: torchvision is a stand-in on this CPU test host")
EOF
  done
  echo "$dir/shims" > "$site/p2p_host_shims.pth"
fi
"$dir/venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$torch_version')" \
  || fail "torch changed while installing ComfyUI's requirements"
echo "$stamp" > "$dir/stamp"
echo "host.sh: ready: COMFYUI_PATH=$dir/ComfyUI $dir/venv/bin/python -m pytest tests -rs"
