#!/usr/bin/env bash
# Install the custom nodes named in a list (default ./custom_nodes.txt), each at its pinned
# commit, and their requirements into the Python that runs ComfyUI.
#
#   scripts/install_custom_nodes.sh LIST DEST PYTHON
#
#   LIST    lines "NAME GIT_URL COMMIT" ('#' comments and blank lines ignored)
#   DEST    ComfyUI's custom_nodes directory
#   PYTHON  the interpreter that runs ComfyUI (its pip installs the requirements)
#
# Each node is fetched at exactly COMMIT (a shallow fetch of that commit, else a full
# clone), checked (HEAD must equal COMMIT), its .git removed, then its requirements.txt
# installed with every package already installed held at its version (constraints: in the
# image that is the hash-pinned lock, so a node cannot swap torch or a ComfyUI dependency). A node with install.py gets it run with PYTHON, as
# ComfyUI-Manager does. Fails on the first error, naming the node.
set -euo pipefail -f

if [ "$#" -ne 3 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    [ "$#" -eq 3 ] || exit 2
    exit 0
fi
LIST=$1
DEST=$2
PYTHON=$3

die() { echo "install_custom_nodes: $*" >&2; exit 1; }

[ -f "$LIST" ] || die "list $LIST not found"
command -v git >/dev/null 2>&1 || die "git not found (install it, or build with SKIP_CUSTOM_NODES=1)"
"$PYTHON" -c "import sys" 2>/dev/null || die "PYTHON=$PYTHON does not run"
mkdir -p "$DEST"

# Hold every installed package at its version (in the image: exactly the hash-pinned
# lock), so a node can add packages but never move one ComfyUI or torch depends on.
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
"$PYTHON" -m pip list --format=freeze 2>/dev/null > "$constraints" || true

lineno=0
count=0
while IFS= read -r line || [ -n "$line" ]; do
    lineno=$((lineno + 1))
    line=${line%%#*}
    # shellcheck disable=SC2086
    set -- $line
    [ "$#" -eq 0 ] && continue
    [ "$#" -eq 3 ] || die "$LIST:$lineno: expected 'NAME GIT_URL COMMIT', got: $line"
    name=$1 url=$2 commit=$3
    case $name in
        */*|.*|"") die "$LIST:$lineno: NAME '$name' must be a plain folder name" ;;
    esac
    [[ $commit =~ ^[0-9a-f]{40}$ ]] \
        || die "$LIST:$lineno: COMMIT '$commit' for $name is not a full 40-hex commit id"

    target="$DEST/$name"
    echo "install_custom_nodes: $name @ ${commit:0:12} from $url"
    rm -rf "$target"
    git init --quiet "$target"
    if ! git -C "$target" fetch --quiet --depth 1 "$url" "$commit" 2>/dev/null; then
        # Servers that refuse fetching a commit by id: full clone, then check out.
        rm -rf "$target"
        git clone --quiet "$url" "$target" || die "$name: cannot clone $url"
    fi
    git -C "$target" -c advice.detachedHead=false checkout --quiet "$commit" 2>/dev/null \
        || git -C "$target" -c advice.detachedHead=false checkout --quiet FETCH_HEAD \
        || die "$name: commit $commit not found in $url"
    head=$(git -C "$target" rev-parse HEAD)
    [ "$head" = "$commit" ] || die "$name: checked out $head, expected $commit"
    rm -rf "$target/.git"

    if [ -f "$target/requirements.txt" ]; then
        echo "install_custom_nodes: $name: installing requirements.txt"
        (cd "$target" && "$PYTHON" -m pip install --quiet -r requirements.txt -c "$constraints") \
            || die "$name: pip install -r requirements.txt failed"
    fi
    if [ -f "$target/install.py" ]; then
        echo "install_custom_nodes: $name: running install.py"
        (cd "$target" && "$PYTHON" install.py) || die "$name: install.py failed"
    fi
    count=$((count + 1))
done < "$LIST"
echo "install_custom_nodes: $count node(s) installed into $DEST"
