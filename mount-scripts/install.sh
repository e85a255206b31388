#!/usr/bin/env bash
# Install podfs from a checkout: the binary, the mount(8) helper, systemd units, the manual
# pages and shell completions. (On Debian and Ubuntu the package is simpler: see
# mount-scripts/package.sh.)
#
#   mount-scripts/install.sh                 # system-wide, into /usr/local (needs root)
#   mount-scripts/install.sh --user          # into ~/.local and ~/.config/systemd/user
#   DESTDIR=/tmp/stage mount-scripts/install.sh --bin target/release/podfs   # staging
#
# Options: --prefix DIR (default /usr/local, or ~/.local with --user), --bin PATH (a built
# binary; default: build with `cargo build --release`), --user, --force (install beside
# the Debian package, replacing its mount(8) helper).
#
# Use one or the other: on Debian and Ubuntu the package, elsewhere this script. Both
# install /sbin/mount.fuse.podfs; this script refuses to replace the package's.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
user=false
force=false
prefix=""
bin=""
while [ $# -gt 0 ]; do
    case "$1" in
        --user) user=true ;;
        --prefix) prefix=$2; shift ;;
        --bin) bin=$2; shift ;;
        --force) force=true ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
dest=${DESTDIR:-}
if [ -z "$prefix" ]; then
    if $user; then prefix=$HOME/.local; else prefix=/usr/local; fi
fi
if ! $user && [ -z "$dest" ] && ! $force && command -v dpkg-query >/dev/null &&
    dpkg-query -S /sbin/mount.fuse.podfs >/dev/null 2>&1; then
    echo "install.sh: the podfs package is installed and owns /sbin/mount.fuse.podfs;" >&2
    echo "install.sh: use the package (or remove it: apt-get remove podfs), or pass --force" >&2
    echo "install.sh: to replace its mount(8) helper with this install's" >&2
    exit 1
fi
if [ -z "$bin" ]; then
    (cd "$root" && cargo build --release --locked)
    bin=$root/target/release/podfs
fi
[ -x "$bin" ] || { echo "install.sh: $bin is not an executable" >&2; exit 1; }

bindir=$prefix/bin
subst() { sed "s|@BINDIR@|$bindir|g" "$1"; }
put() { # put MODE SOURCE-TEXT-ON-STDIN TARGET
    install -d "$(dirname "$dest$2")"
    cat > "$dest$2"
    chmod "$1" "$dest$2"
}

install -d "$dest$bindir"
install -m 0755 "$bin" "$dest$bindir/podfs"
# The pages are written straight into the destination (no temporary directory: an
# install must work where /tmp is not writable), then the section-8 ones move to man8.
man1=$dest$prefix/share/man/man1
man8=$dest$prefix/share/man/man8
install -d "$man1" "$man8"
"$bin" man --dir "$man1"
for page in "$man1"/*.8; do mv -f "$page" "$man8/"; done
chmod 0644 "$man1"/podfs*.1 "$man8"/*.podfs.8
"$bin" completions bash | put 0644 "$prefix/share/bash-completion/completions/podfs"
"$bin" completions zsh | put 0644 "$prefix/share/zsh/site-functions/_podfs"
"$bin" completions fish | put 0644 "$prefix/share/fish/vendor_completions.d/podfs.fish"

if $user; then
    subst "$here/systemd/podfs.user.service" | put 0644 "$HOME/.config/systemd/user/podfs.service"
    echo "installed podfs for $(id -un); enable the login mount with: systemctl --user enable --now podfs"
else
    subst "$here/mount.fuse.podfs" | put 0755 "/sbin/mount.fuse.podfs"
    subst "$here/systemd/podfs@.service" | put 0644 "/etc/systemd/system/podfs@.service"
    install -d "$dest/etc/podfs"
    echo "installed podfs into $prefix; mount with: mount -t fuse.podfs HOME MOUNTPOINT,"
    echo "an /etc/fstab line (see mount-scripts/fstab.example), or: systemctl enable --now podfs@NAME"
fi
