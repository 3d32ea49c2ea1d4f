# meshinit's images. Plain Dockerfile syntax: docker build (BuildKit, or the legacy builder
# given BUILDER_PLATFORM, below), docker buildx, podman build and buildah bud all take it.
#
#   docker build -t meshinit .                              the default: meshinit + iptables
#                                                           (legacy and nft), a drop-in for
#                                                           proxyv2 as istio-init
#   docker build --target nftables -t meshinit:nftables .   meshinit alone (native nftables)
#   docker buildx build --platform linux/amd64,linux/arm64 ...   both architectures at once
#   podman build --platform linux/amd64,linux/arm64 --manifest meshinit \
#       --build-arg BUILDER_PLATFORM=linux/$(dpkg --print-architecture) .
#
# The bases are build arguments: Docker Hub's by default; scripts/image.sh passes bases made
# from the Debian archive (no registry needed). Any Rust >= 1.85 with glibc's static libraries
# (libc6-dev) builds. The target is $TARGETARCH (amd64 or arm64) when the builder gives it
# (BuildKit, buildx, podman, buildah), else the build machine's own; the build stage runs on
# the build machine ($BUILDPLATFORM) and cross-compiles, installing the target's Rust std
# (rustup) and cross linker (apt) only when its base lacks them. The iptables stage runs on
# the target platform (emulated by qemu-user/binfmt_misc when foreign).
#
# The build stage runs on the build machine: FROM --platform=$BUILDPLATFORM, which BuildKit and
# buildx set. Docker's legacy builder (DOCKER_BUILDKIT=0) does not, and podman 4.3 sets it in
# stages but not in FROM lines (the build stage would run emulated): give them the build
# machine's platform as BUILDER_PLATFORM (BuildKit ignores it; BUILDPLATFORM itself cannot be
# declared here without BuildKit 20.10 emptying it, nor passed undeclared to the legacy builder):
#   --build-arg BUILDER_PLATFORM=linux/$(dpkg --print-architecture)
ARG BUILDER_PLATFORM
ARG RUST_IMAGE=docker.io/library/rust:1.85-bookworm
ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim

# --- Debian's iptables (legacy and nft variants), its extensions and exactly its libraries --
# First: podman 4.3 looks up the bases of the stages after a FROM --platform for that platform.
FROM ${DEBIAN_IMAGE} AS iptables
RUN set -eu; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables; \
    rm -rf /var/lib/apt/lists/*
COPY scripts/image-collect-iptables.sh /usr/local/bin/
RUN sh /usr/local/bin/image-collect-iptables.sh /out

# --- meshinit, statically linked (glibc, +crt-static: no interpreter, no library) ------------
# amd64's is a static-pie, whose ~140 kB of relative relocations pack into ~2 kB as DT_RELR
# (-z pack-relative-relocs: binutils >= 2.38, and glibc >= 2.36, linked in, applies them at
# start); arm64's is position-dependent and has none.
FROM --platform=${BUILDPLATFORM:-${BUILDER_PLATFORM}} ${RUST_IMAGE} AS build
ARG TARGETARCH
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN set -eu; \
    host="$(dpkg --print-architecture)"; \
    arch="${TARGETARCH:-$host}"; \
    case "$arch" in \
        amd64) target=x86_64-unknown-linux-gnu gnu=x86_64-linux-gnu gccpkg=gcc-x86-64-linux-gnu \
            link="-C link-arg=-Wl,-z,pack-relative-relocs" ;; \
        arm64) target=aarch64-unknown-linux-gnu gnu=aarch64-linux-gnu gccpkg=gcc-aarch64-linux-gnu \
            link= ;; \
        *) echo "error: TARGETARCH '$arch' is not supported (amd64, arm64)" >&2; exit 1 ;; \
    esac; \
    if [ "$arch" != "$host" ]; then \
        if [ ! -d "$(rustc --print sysroot)/lib/rustlib/$target/lib" ]; then \
            rustup target add "$target"; \
        fi; \
        if ! command -v "$gnu-gcc" >/dev/null; then \
            apt-get update; \
            DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
                "$gccpkg" "libc6-dev-$arch-cross"; \
        fi; \
        export "CARGO_TARGET_$(echo "$target" | tr a-z- A-Z_)_LINKER=$gnu-gcc"; \
    fi; \
    RUSTFLAGS="-C target-feature=+crt-static $link" CARGO_PROFILE_RELEASE_STRIP=symbols \
        cargo build --release --locked --target "$target"; \
    bin="target/$target/release/meshinit"; \
    if readelf -lW "$bin" | grep -q 'Requesting program interpreter' \
        || readelf -dW "$bin" | grep -q '(NEEDED)'; then \
        echo "error: $bin is not static:" >&2; readelf -ldW "$bin" >&2; exit 1; \
    fi; \
    readelf -hW "$bin" | grep -E '^ *Machine:'; \
    install -D -m 0755 "$bin" /out/usr/local/bin/meshinit; \
    if [ "$arch" = "$host" ]; then /out/usr/local/bin/meshinit --version; fi; \
    mkdir -p /out/etc /out/run /out/tmp; \
    chmod 1777 /out/tmp; \
    printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
        'istio-proxy:x:1337:1337:istio-proxy:/nonexistent:/sbin/nologin' \
        'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' >/out/etc/passwd; \
    printf '%s\n' 'root:x:0:' 'istio-proxy:x:1337:' 'nogroup:x:65534:' >/out/etc/group

# --- meshinit alone: --backend auto finds no iptables tool and uses native nftables ---------
FROM scratch AS nftables
COPY --from=build /out/ /
ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENTRYPOINT ["/usr/local/bin/meshinit"]
CMD ["--help"]

# --- the default: meshinit + iptables, what proxyv2 is to istio-init -------------------------
FROM scratch AS default
COPY --from=build /out/ /
COPY --from=iptables /out/ /
ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENTRYPOINT ["/usr/local/bin/meshinit"]
CMD ["--help"]
