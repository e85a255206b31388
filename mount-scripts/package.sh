#!/usr/bin/env bash
# Build the Debian package: target/debian/podfs_<version>_<arch>.deb.
#
#   mount-scripts/package.sh            # needs cargo-deb (cargo install cargo-deb --locked)
#
# The files a package needs but the build does not produce (manual pages and completions,
# generated from the CLI definition; the mount helper and systemd units with their paths
# filled in) are staged into target/package first; [package.metadata.deb] in Cargo.toml
# lists where each goes.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v cargo-deb >/dev/null || {
    echo "package.sh: cargo-deb is missing; install it with: cargo install cargo-deb --locked" >&2
    exit 1
}

cargo build --release --locked
bin=target/release/podfs
stage=target/package
rm -rf "$stage"
mkdir -p "$stage/man" "$stage/completions" "$stage/systemd"

"$bin" man --dir "$stage/man"
gzip -9n "$stage"/man/*
"$bin" completions bash > "$stage/completions/podfs.bash"
"$bin" completions zsh > "$stage/completions/_podfs"
"$bin" completions fish > "$stage/completions/podfs.fish"
subst() { sed "s|@BINDIR@|/usr/bin|g" "$1" > "$2"; }
subst mount-scripts/mount.fuse.podfs "$stage/mount.fuse.podfs"
chmod 0755 "$stage/mount.fuse.podfs"
subst mount-scripts/systemd/podfs@.service "$stage/systemd/podfs@.service"
subst mount-scripts/systemd/podfs.user.service "$stage/systemd/podfs.service"

cargo deb --no-build --locked --strip "$@"
