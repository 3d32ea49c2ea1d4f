#!/usr/bin/env python3
"""What makes up a binary: its sections, and its symbols' sizes by crate (cargo-bloat's
listing, from binutils' nm). Needs an unstripped binary (scripts/image.sh size builds one).

    scripts/bloat.py [--nm NM] [--top N] BINARY

Rust symbols are grouped by the crate of their path (for `<T as Trait>::f`, T's crate, or the
trait's when T is a primitive or a std type the crate implements a trait of its own for); C
symbols (glibc, libgcc, linked statically) are one group. Symbol sizes do not add up to the
file: unwind tables (.eh_frame, .gcc_except_table), relocations and padding have no symbol,
which is why the sections come first.
"""

import argparse
import collections
import re
import subprocess
import sys

STD_CRATES = {"std", "core", "alloc", "compiler_builtins", "panic_unwind", "panic_abort",
              "std_detect", "rustc_demangle", "gimli", "addr2line", "miniz_oxide", "object",
              "hashbrown", "adler", "adler2", "memchr", "unwind"}
PRIMITIVE = re.compile(r"^(&|\*|\[|\(|mut |const |dyn |fn|u8|u16|u32|u64|u128|usize|i8|i16"
                       r"|i32|i64|i128|isize|f32|f64|bool|char|str)")


def split_top(text, sep):
    """Splits TEXT at SEP where it is not inside <>, (), []."""
    depth, start, parts, i = 0, 0, [], 0
    while i < len(text):
        c = text[i]
        if c in "<([":
            depth += 1
        elif c in ">)]":
            depth -= 1
        elif depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(text[start:])
    return parts


def crate_of(name):
    """The crate a demangled Rust path belongs to."""
    name = name.strip()
    if name.startswith("<"):
        # <T as Trait>::f or <T>::f: the part between the outer brackets.
        depth = 0
        for i, c in enumerate(name):
            depth += c == "<"
            depth -= c == ">"
            if depth == 0:
                inner = name[1:i]
                break
        else:
            inner = name[1:]
        sides = split_top(inner, " as ")
        own = sides[0].strip()
        if PRIMITIVE.match(own) and len(sides) > 1:
            return crate_of(sides[1])
        crate = crate_of(own) if not PRIMITIVE.match(own) else "std"
        if crate in STD_CRATES and len(sides) > 1:
            trait = crate_of(sides[1])
            if trait not in STD_CRATES:
                return trait
        return crate
    head = split_top(name, "::")[0]
    head = head.split("<")[0]
    return head or "?"


def symbols(nm, binary):
    """(size, kind, mangled, demangled) for each defined symbol with a size."""
    def run(extra):
        out = subprocess.run([nm, "-S", "-p", "--defined-only", *extra, binary],
                             check=True, capture_output=True, text=True).stdout
        return out.splitlines()
    plain, demangled = run([]), run(["-C"])
    if len(plain) != len(demangled):
        sys.exit("bloat.py: nm's two listings differ in length")
    for raw, dem in zip(plain, demangled):
        fields = raw.split(None, 3)
        if len(fields) < 4:
            continue
        size, kind, mangled = int(fields[1], 16), fields[2], fields[3]
        if kind in "tTwWrRdDbBvV" and size:
            yield size, kind, mangled, dem.split(None, 3)[3]


def sections(binary):
    """(name, size) of the sections loaded or kept in the file."""
    out = subprocess.run(["readelf", "-SW", binary], check=True, capture_output=True,
                         text=True).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+(\S+)\s+\S+\s+\S+\s+([0-9a-f]+)", line)
        if m and m.group(2) not in ("NULL", "NOBITS") and not m.group(1).startswith(
                (".symtab", ".strtab", ".comment", ".debug")):
            rows.append((m.group(1), int(m.group(3), 16)))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("binary")
    ap.add_argument("--nm", default="nm", help="nm for the binary's architecture")
    ap.add_argument("--top", type=int, default=25, help="largest symbols to list")
    args = ap.parse_args()

    secs = sections(args.binary)
    loaded = sum(size for _, size in secs)
    print(f"{args.binary}: {loaded} bytes in sections kept by strip")
    for name, size in sorted(secs, key=lambda r: -r[1]):
        if size >= 4096:
            print(f"  {name:<22} {size:>9}  {100 * size / loaded:5.1f}%")

    by_crate = collections.Counter()
    code = collections.Counter()
    syms = list(symbols(args.nm, args.binary))
    for size, kind, mangled, dem in syms:
        rust = mangled.startswith(("_ZN", "_R"))
        crate = crate_of(dem) if rust else "[C: glibc, libgcc]"
        by_crate[crate] += size
        if kind in "tTwW":
            code[crate] += size
    total = sum(by_crate.values())
    print(f"\nsymbols by crate ({total} bytes in {len(syms)} symbols; code = .text)")
    print(f"  {'crate':<24} {'bytes':>9} {'share':>6} {'code':>9}")
    for crate, size in by_crate.most_common():
        if size >= 2048:
            print(f"  {crate:<24} {size:>9} {100 * size / total:5.1f}% {code[crate]:>9}")
    rest = sum(s for s in by_crate.values() if s < 2048)
    print(f"  {'(crates under 2 KB)':<24} {rest:>9}")

    print(f"\nlargest {args.top} symbols")
    for size, _, _, dem in sorted(syms, key=lambda s: -s[0])[:args.top]:
        print(f"  {size:>8}  {dem[:110]}")


if __name__ == "__main__":
    main()
