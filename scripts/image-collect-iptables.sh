#!/bin/sh
# Run by the Dockerfile's iptables stage (a Debian image with the iptables package installed):
# copies into OUT the files a FROM-scratch image needs to run both iptables variants, and
# nothing else:
#   /usr/sbin/xtables-legacy-multi, /usr/sbin/xtables-nft-multi;
#   the iptables/ip6tables names (plain, -save, -restore; -legacy and -nft variants of each)
#   as symlinks to them, the plain names pointing where Debian's alternatives point;
#   the extensions (/usr/lib/<triplet>/xtables/*.so);
#   exactly the shared libraries these need (ldd) and the dynamic loader, at their paths;
#   the copyright files of the Debian packages they come from.
# POSIX sh: Debian's base images have dash, not bash.
set -eu
OUT="${1:?usage: image-collect-iptables.sh OUT}"
SBIN=/usr/sbin

xtlib=
for dir in /usr/lib/*-linux-*/xtables; do
    [ -d "$dir" ] && { xtlib="$dir"; break; }
done
[ -n "$xtlib" ] || { echo "error: no /usr/lib/<triplet>/xtables directory" >&2; exit 1; }

mkdir -p "$OUT$SBIN" "$OUT$xtlib"
for multi in xtables-legacy-multi xtables-nft-multi; do
    cp -p "$SBIN/$multi" "$OUT$SBIN/$multi"
done

# Every name meshinit or a person may call.
for fam in iptables ip6tables; do
    for suffix in "" -save -restore; do
        for variant in "" -legacy -nft; do
            name="$fam$variant$suffix"
            target="$(readlink -f "$SBIN/$name")"
            case "$target" in
                "$SBIN/xtables-legacy-multi" | "$SBIN/xtables-nft-multi") ;;
                *) echo "error: $SBIN/$name resolves to '$target', not an xtables multi binary" >&2
                   exit 1 ;;
            esac
            ln -sf "$(basename "$target")" "$OUT$SBIN/$name"
        done
    done
done

cp -p "$xtlib"/*.so "$OUT$xtlib/"

# The libraries: the union of ldd's answers for both binaries and every extension. Lines are
# "libX.so.N => /path (0x...)" or, for the loader, "/lib64/ld-linux-x86-64.so.2 (0x...)"; the
# loader is copied at the path the binaries name (their PT_INTERP), the others where they live
# (with merged /usr, under /usr/lib/<triplet>, which the loader searches without ld.so.cache).
libs="$(for f in "$SBIN/xtables-legacy-multi" "$SBIN/xtables-nft-multi" "$xtlib"/*.so; do
    ldd "$f"
done | awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }' | sort -u)"
for lib in $libs; do
    # The loader where PT_INTERP names it; a library under its soname, in the directory it
    # really lives in (with merged /usr, /lib/<triplet> is /usr/lib/<triplet>).
    case "$lib" in
        */ld-linux*) dest="$lib" ;;
        *) dest="$(dirname "$(readlink -f "$lib")")/$(basename "$lib")" ;;
    esac
    mkdir -p "$OUT$(dirname "$dest")"
    cp -L "$lib" "$OUT$dest"
done

# Copyright notices of the packages the copied files belong to (GPL-2 for iptables).
for f in "$SBIN/xtables-legacy-multi" "$SBIN/xtables-nft-multi" $libs; do
    dpkg -S "$(readlink -f "$f")" 2>/dev/null || dpkg -S "$f" 2>/dev/null || true
done | cut -d: -f1 | sort -u | while read -r pkg; do
    src="/usr/share/doc/$pkg/copyright"
    if [ -f "$src" ]; then
        mkdir -p "$OUT/usr/share/doc/$pkg"
        cp -p "$src" "$OUT/usr/share/doc/$pkg/copyright"
    fi
done

# The lock file of legacy iptables lives in /run; the build stage makes /run, /tmp, /etc.
echo "collected iptables: $(find "$OUT" -type f | wc -l) files, $(du -sk "$OUT" | cut -f1) KiB" >&2
for lib in $libs; do echo "  library: $lib" >&2; done
