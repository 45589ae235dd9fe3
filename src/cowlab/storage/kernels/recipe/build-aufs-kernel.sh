#!/usr/bin/env bash
# Build a Linux 6.1 kernel with AUFS built in (CONFIG_AUFS_FS=y) for cowlab's VM route
# (virtme-ng / QEMU TCG, host root shared read-only over 9p).
#
# Inputs: Debian's linux-source-6.1 (/usr/src/linux-source-6.1.tar.xz), an aufs-standalone tree
# (branch aufs6.1) at a pinned commit, a config fragment and cowlab's port patch.
#
#   build-aufs-kernel.sh --aufs PATH_OR_GIT_URL --commit SHA --fragment aufs.config \
#       --port-patch aufs6.1-port.patch --out DIR [--jobs N]
#   build-aufs-kernel.sh --print-key --aufs ... --commit SHA --fragment F --port-patch P
#       prints the 12-hex cache key over the inputs (cowlab's cache dir is aufs-6.1-KEY)
#
# On success DIR holds vmlinuz, config and build.json. DIR is assembled beside itself and
# renamed into place at the end, so it is either complete or absent. The build tree lives in a
# temporary directory that is removed on exit (set KEEP_TMP=1 to keep it for debugging).
# Needs: tar xz patch make gcc flex bison bc libelf-dev libssl-dev (git only for a URL or a
# git checkout). Run it under `nice` if the machine is shared.
set -euo pipefail

LINUX_TARBALL=${LINUX_TARBALL:-/usr/src/linux-source-6.1.tar.xz}
LINUX_PKG=${LINUX_PKG:-linux-source-6.1}
# The aufs-standalone patches applied, in the order AUFS's README gives for a built-in aufs
# (README, "3. Configuration and Compilation", way 1). aufs6-standalone.patch only exports
# symbols for CONFIG_AUFS_FS=m and is not needed for =y.
AUFS_PATCHES=(aufs6-kbuild.patch aufs6-base.patch aufs6-mmap.patch)

usage() {
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

AUFS= COMMIT= FRAGMENT= PORT= OUT= JOBS=$(nproc) PRINT_KEY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --aufs) AUFS=${2:?}; shift 2 ;;
        --commit) COMMIT=${2:?}; shift 2 ;;
        --fragment) FRAGMENT=${2:?}; shift 2 ;;
        --port-patch) PORT=${2:?}; shift 2 ;;
        --out) OUT=${2:?}; shift 2 ;;
        --jobs|-j) JOBS=${2:?}; shift 2 ;;
        --print-key) PRINT_KEY=1; shift ;;
        -h|--help) usage ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done
[ -n "$AUFS" ] && [ -n "$COMMIT" ] && [ -n "$FRAGMENT" ] && [ -n "$PORT" ] || usage
[ "$PRINT_KEY" = 1 ] || [ -n "$OUT" ] || usage
[[ "$COMMIT" =~ ^[0-9a-fA-F]{7,40}$ ]] || { echo "--commit must be 7-40 hex digits" >&2; exit 2; }
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || { echo "--jobs must be a positive number" >&2; exit 2; }
COMMIT=${COMMIT,,}
for f in "$FRAGMENT" "$PORT" "$LINUX_TARBALL"; do
    [ -f "$f" ] || { echo "missing file: $f" >&2; exit 2; }
done
FRAGMENT=$(readlink -f "$FRAGMENT")
PORT=$(readlink -f "$PORT")
SELF=$(readlink -f "${BASH_SOURCE[0]}")

sha256() { sha256sum "$1" | cut -d' ' -f1; }
LINUX_PKG_VERSION=$(dpkg-query -W -f='${Package} ${Version}' "$LINUX_PKG" 2>/dev/null) ||
    { echo "$LINUX_PKG is not installed (apt-get install $LINUX_PKG)" >&2; exit 2; }
FRAGMENT_SHA=$(sha256 "$FRAGMENT")
PORT_SHA=$(sha256 "$PORT")
SCRIPT_SHA=$(sha256 "$SELF")
KEY_INPUTS=$(printf 'linux-source=%s\naufs-commit=%s\nfragment-sha256=%s\nport-patch-sha256=%s\nscript-sha256=%s\n' \
    "$LINUX_PKG_VERSION" "$COMMIT" "$FRAGMENT_SHA" "$PORT_SHA" "$SCRIPT_SHA")
KEY=$(printf '%s' "$KEY_INPUTS" | sha256sum | cut -c1-12)
if [ "$PRINT_KEY" = 1 ]; then
    echo "$KEY"
    exit 0
fi

OUT=$(readlink -m "$OUT")
if [ -e "$OUT" ]; then
    echo "output directory already exists: $OUT (remove it to rebuild)" >&2
    exit 2
fi
mkdir -p "$(dirname "$OUT")"

STEP=setup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/aufs-kernel.XXXXXX")
STAGE=
LOG=$WORK/build.log
cleanup() {
    local rc=$?
    if [ $rc -ne 0 ]; then
        echo "build-aufs-kernel: FAILED at step: $STEP (exit $rc)" >&2
        if [ -s "$LOG" ]; then
            echo "---- last lines of the $STEP log ----" >&2
            tail -n 60 "$LOG" >&2
        fi
    fi
    if [ -n "$STAGE" ]; then rm -rf "$STAGE"; fi
    if [ "${KEEP_TMP:-0}" = 1 ]; then
        echo "build-aufs-kernel: kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
step() { STEP=$1; : > "$LOG"; echo "== [$(date -u +%H:%M:%S)] $1: $2"; }
T0=$(date +%s)

# ---------------------------------------------------------------------------------------------
step extract "unpack $LINUX_TARBALL ($LINUX_PKG_VERSION)"
tar -xf "$LINUX_TARBALL" -C "$WORK" >>"$LOG" 2>&1
SRC=$WORK/linux-source-6.1
[ -f "$SRC/Makefile" ] || { echo "no linux-source-6.1/Makefile in the tarball" >>"$LOG"; false; }

# ---------------------------------------------------------------------------------------------
step aufs-patch "AUFS tree at $COMMIT, patches ${AUFS_PATCHES[*]}"
commit_matches() {  # $1 = commit found; either may be abbreviated
    local found=${1,,}
    [ ${#found} -ge 7 ] && { [[ "$found" == "$COMMIT"* ]] || [[ "$COMMIT" == "$found"* ]]; }
}
if [[ "$AUFS" =~ ^(https?|git|ssh):// ]] || [[ "$AUFS" =~ ^git@ ]]; then
    AUFS_TREE=$WORK/aufs
    git clone --quiet --no-checkout "$AUFS" "$AUFS_TREE" >>"$LOG" 2>&1
    git -C "$AUFS_TREE" -c advice.detachedHead=false checkout --quiet "$COMMIT" >>"$LOG" 2>&1
    AUFS_COMMIT=$(git -C "$AUFS_TREE" rev-parse HEAD)
    AUFS_SOURCE="git:$AUFS"
elif [ -d "$AUFS" ]; then
    AUFS_TREE=$(readlink -f "$AUFS")
    if [ -e "$AUFS_TREE/.git" ]; then
        AUFS_COMMIT=$(git -C "$AUFS_TREE" rev-parse HEAD)
        if [ -n "$(git -C "$AUFS_TREE" status --porcelain --untracked-files=no)" ]; then
            echo "$AUFS_TREE has uncommitted changes" >>"$LOG"; false
        fi
        AUFS_SOURCE="git-checkout:$AUFS_TREE"
    else
        # A plain copy: the commit comes from a marker file in the tree or from the vendor
        # README.md table beside it ("| <folder> | <url> | <branch> | <commit> (...) | ...").
        AUFS_COMMIT=
        for m in .aufs-commit COMMIT .commit; do
            if [ -f "$AUFS_TREE/$m" ]; then AUFS_COMMIT=$(tr -d ' \n' < "$AUFS_TREE/$m"); break; fi
        done
        if [ -z "$AUFS_COMMIT" ] && [ -f "$(dirname "$AUFS_TREE")/README.md" ]; then
            AUFS_COMMIT=$(awk -F'|' -v d="$(basename "$AUFS_TREE")" '
                { gsub(/^ +| +$/, "", $2) } $2 == d { split($5, a, " "); print a[1]; exit }' \
                "$(dirname "$AUFS_TREE")/README.md")
        fi
        [ -n "$AUFS_COMMIT" ] || { echo "cannot tell which commit $AUFS_TREE is (no .git, no marker, not in ../README.md)" >>"$LOG"; false; }
        AUFS_SOURCE="copy:$AUFS_TREE"
    fi
else
    echo "--aufs is neither a directory nor a git URL: $AUFS" >>"$LOG"; false
fi
if ! commit_matches "$AUFS_COMMIT"; then
    echo "AUFS tree is at $AUFS_COMMIT, wanted $COMMIT" >>"$LOG"; false
fi
echo "   aufs $AUFS_SOURCE at $AUFS_COMMIT"
# Hunks the port patch replaces: a line "cowlab-expected-rejects: PATCH FILE HUNK..." in its
# header. Any other reject fails the build.
EXPECTED_REJECTS=$(sed -n 's/^cowlab-expected-rejects: *//p' "$PORT")
for p in "${AUFS_PATCHES[@]}"; do
    [ -f "$AUFS_TREE/$p" ] || { echo "missing $AUFS_TREE/$p" >>"$LOG"; false; }
    echo "-- patch -p1 < $p" >>"$LOG"
    set +e
    (cd "$SRC" && patch -p1 --forward --no-backup-if-mismatch --reject-file=- < "$AUFS_TREE/$p") > "$WORK/patch.out" 2>&1
    prc=$?
    set -e
    cat "$WORK/patch.out" >>"$LOG"
    got=$(awk -v p="$p" '/^patching file /{f=$3} /^Hunk #[0-9]+ FAILED/{h[f]=h[f] " " substr($2,2)}
        END {for (f in h) print p " " f h[f]}' "$WORK/patch.out" | sort)
    want=$(printf '%s\n' "$EXPECTED_REJECTS" | awk -v p="$p" '$1 == p' | sort)
    if [ "$got" != "$want" ]; then
        echo "unexpected result of $p: rejects [${got:-none}], expected [${want:-none}]" >>"$LOG"; false
    fi
    if [ $prc -ne 0 ] && [ -z "$got" ]; then
        echo "$p failed (exit $prc)" >>"$LOG"; false
    fi
    if [ -n "$got" ]; then
        echo "   $p: rejected hunks as expected ($got), ported by $(basename "$PORT")"
    fi
done
# AUFS's README: copy {Documentation,fs,include/uapi/linux/aufs_type.h}, never
# include/uapi/linux/Kbuild.
cp -a "$AUFS_TREE/Documentation/." "$SRC/Documentation/"
cp -a "$AUFS_TREE/fs/." "$SRC/fs/"
cp -a "$AUFS_TREE/include/uapi/linux/aufs_type.h" "$SRC/include/uapi/linux/"

# ---------------------------------------------------------------------------------------------
step port-patch "apply $(basename "$PORT")"
(cd "$SRC" && patch -p1 --forward --fuzz=0 --no-backup-if-mismatch < "$PORT") >>"$LOG" 2>&1
if find "$SRC" \( -name '*.rej' -o -name '*.orig' \) | grep -q .; then
    echo "stray .rej/.orig files after patching" >>"$LOG"; false
fi

# ---------------------------------------------------------------------------------------------
step config "defconfig + $(basename "$FRAGMENT"), olddefconfig"
export KBUILD_BUILD_USER=cowlab KBUILD_BUILD_HOST=cowlab
KBUILD_BUILD_TIMESTAMP=$(date -u -d "@$(stat -c %Y "$LINUX_TARBALL")" '+%Y-%m-%d %H:%M:%S UTC')
export KBUILD_BUILD_TIMESTAMP
make -C "$SRC" defconfig >>"$LOG" 2>&1
(cd "$SRC" && scripts/kconfig/merge_config.sh -m .config "$FRAGMENT") >>"$LOG" 2>&1
make -C "$SRC" olddefconfig >>"$LOG" 2>&1
# Every item of the fragment must have survived olddefconfig (dependencies can drop them).
awk '
    function item(line) {
        if (match(line, /^CONFIG_[A-Za-z0-9_]+=/)) { k = substr(line, 1, RLENGTH - 1); v = substr(line, RLENGTH + 1); return 1 }
        if (match(line, /^# CONFIG_[A-Za-z0-9_]+ is not set$/)) { k = substr(line, 3, RLENGTH - 13); v = "n"; return 1 }
        return 0
    }
    NR == FNR { if (item($0)) want[k] = v; next }
    { if (item($0)) have[k] = v }
    END {
        bad = 0
        for (k in want) { h = (k in have) ? have[k] : "n"; if (h != want[k]) { print k ": wanted " want[k] ", got " h; bad = 1 } }
        exit bad
    }' "$FRAGMENT" "$SRC/.config" > "$WORK/config.check" || {
    cat "$WORK/config.check" >>"$LOG"
    echo "config items dropped or changed by olddefconfig (above)" >>"$LOG"; false; }
grep -qx 'CONFIG_AUFS_FS=y' "$SRC/.config" || { echo "CONFIG_AUFS_FS=y did not survive olddefconfig" >>"$LOG"; false; }
echo "   CONFIG_AUFS_FS=y and every item of the fragment survived"

# ---------------------------------------------------------------------------------------------
step build "make -j$JOBS bzImage (log in the temp dir; tail shown on failure)"
B0=$(date +%s)
make -C "$SRC" -j"$JOBS" bzImage >>"$LOG" 2>&1
B1=$(date +%s)
BZ=$SRC/arch/x86/boot/bzImage
KREL=$(cat "$SRC/include/config/kernel.release")  # written by the build (has CONFIG_LOCALVERSION)
[ -s "$BZ" ] || { echo "no bzImage" >>"$LOG"; false; }
grep -q ' aufs_fs_type$' "$SRC/System.map" || { echo "aufs_fs_type missing from System.map: aufs not built in" >>"$LOG"; false; }
echo "   built $KREL in $((B1 - B0)) s"

# ---------------------------------------------------------------------------------------------
step install "write $OUT"
STAGE=$(mktemp -d "$(dirname "$OUT")/.$(basename "$OUT").tmp.XXXXXX")
cp "$BZ" "$STAGE/vmlinuz"
cp "$SRC/.config" "$STAGE/config"
CONFIG_SHA=$(sha256 "$STAGE/config")
BZ_BYTES=$(stat -c %s "$STAGE/vmlinuz")
VMLINUX_BYTES=$(stat -c %s "$SRC/vmlinux")
T1=$(date +%s)
json_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }
{
    printf '{\n'
    printf '  "kernel_release": %s,\n' "$(json_str "$KREL")"
    printf '  "linux_source": %s,\n' "$(json_str "$LINUX_PKG_VERSION")"
    printf '  "aufs_commit": %s,\n' "$(json_str "$AUFS_COMMIT")"
    printf '  "aufs_source": %s,\n' "$(json_str "$AUFS_SOURCE")"
    printf '  "aufs_patches": [%s],\n' "$(printf '"%s", ' "${AUFS_PATCHES[@]}" | sed 's/, $//')"
    printf '  "port_patch_sha256": "%s",\n' "$PORT_SHA"
    printf '  "fragment_sha256": "%s",\n' "$FRAGMENT_SHA"
    printf '  "script_sha256": "%s",\n' "$SCRIPT_SHA"
    printf '  "config_sha256": "%s",\n' "$CONFIG_SHA"
    printf '  "key": "%s",\n' "$KEY"
    printf '  "jobs": %s,\n' "$JOBS"
    printf '  "build_seconds": %s,\n' "$((B1 - B0))"
    printf '  "total_seconds": %s,\n' "$((T1 - T0))"
    printf '  "bzimage_bytes": %s,\n' "$BZ_BYTES"
    printf '  "vmlinux_bytes": %s,\n' "$VMLINUX_BYTES"
    printf '  "compiler": %s,\n' "$(json_str "$(gcc --version | head -n1)")"
    printf '  "built_at": "%s"\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf '}\n'
} > "$STAGE/build.json"
mv -T "$STAGE" "$OUT"
STAGE=
STEP=done
echo "== done: $OUT (bzImage $BZ_BYTES bytes, build $((B1 - B0)) s, total $((T1 - T0)) s)"
