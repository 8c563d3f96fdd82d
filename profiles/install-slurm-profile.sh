#!/usr/bin/env bash
# Install profiles/slurm-cluster/config.yaml as the user-level Snakemake profile "slurm", i.e.
#   ${XDG_CONFIG_HOME:-~/.config}/snakemake/slurm/config.yaml
# so that `snakemake --profile slurm` works from the repo root (see the header of that file).
#
#   bash profiles/install-slurm-profile.sh          copy (the copy is yours to edit: account, ...)
#   bash profiles/install-slurm-profile.sh --link   symlink to the repo file instead (CI, dev)
#   add --force to replace an existing, different profile there.
# Idempotent: re-installing the same content/link is a no-op.
set -euo pipefail

mode=copy force=0
for arg in "$@"; do
  case "$arg" in
    --link) mode=link ;;
    --copy) mode=copy ;;
    --force) force=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "install-slurm-profile: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/slurm-cluster/config.yaml"
dest_dir="${XDG_CONFIG_HOME:-$HOME/.config}/snakemake/slurm"
dest="$dest_dir/config.yaml"
[ -f "$src" ] || { echo "install-slurm-profile: missing $src" >&2; exit 1; }

if [ -e "$dest" ] || [ -L "$dest" ]; then
  if [ "$mode" = link ] && [ -L "$dest" ] && [ "$(readlink "$dest")" = "$src" ]; then
    echo "install-slurm-profile: $dest already links to $src"; exit 0
  fi
  if [ "$mode" = copy ] && [ ! -L "$dest" ] && cmp -s "$src" "$dest"; then
    echo "install-slurm-profile: $dest is already up to date"; exit 0
  fi
  if [ "$force" != 1 ]; then
    echo "install-slurm-profile: $dest exists and differs; re-run with --force to replace it" >&2
    exit 1
  fi
  rm -f "$dest"
fi
if [ -e "$dest_dir/profile.yaml" ]; then
  echo "install-slurm-profile: warning: $dest_dir/profile.yaml exists and takes precedence over config.yaml" >&2
fi

mkdir -p "$dest_dir"
if [ "$mode" = link ]; then
  ln -s "$src" "$dest"
else
  cp "$src" "$dest"
fi
echo "install-slurm-profile: installed $dest ($mode of $src)"
