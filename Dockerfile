# meshinit's images. Plain Dockerfile syntax: docker build (legacy builder or BuildKit),
# podman build and buildah bud all take it.
#
#   docker build -t meshinit .                              the default: meshinit + iptables
#                                                           (legacy and nft), a drop-in for
#                                                           proxyv2 as istio-init
#   docker build --target nftables -t meshinit:nftables .   meshinit alone (native nftables)
#
# The bases are build arguments: Docker Hub's by default; scripts/image.sh passes bases made
# from the Debian archive (no registry needed). Any Rust >= 1.85 with glibc's static libraries
# (libc6-dev) builds; the target is the build machine's architecture (x86_64, aarch64, ...).
ARG RUST_IMAGE=docker.io/library/rust:1.85-bookworm
ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim

# --- meshinit, statically linked (glibc, +crt-static: a static-pie with no interpreter) ------
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN set -eu; \
    target="$(uname -m)-unknown-linux-gnu"; \
    RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=symbols \
        cargo build --release --locked --target "$target"; \
    bin="target/$target/release/meshinit"; \
    if readelf -lW "$bin" | grep -q 'Requesting program interpreter' \
        || readelf -dW "$bin" | grep -q '(NEEDED)'; then \
        echo "error: $bin is not static:" >&2; readelf -ldW "$bin" >&2; exit 1; \
    fi; \
    install -D -m 0755 "$bin" /out/usr/local/bin/meshinit; \
    /out/usr/local/bin/meshinit --version; \
    mkdir -p /out/etc /out/run /out/tmp; \
    chmod 1777 /out/tmp; \
    printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
        'istio-proxy:x:1337:1337:istio-proxy:/nonexistent:/sbin/nologin' \
        'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' >/out/etc/passwd; \
    printf '%s\n' 'root:x:0:' 'istio-proxy:x:1337:' 'nogroup:x:65534:' >/out/etc/group

# --- Debian's iptables (legacy and nft variants), its extensions and exactly its libraries --
FROM ${DEBIAN_IMAGE} AS iptables
RUN set -eu; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables; \
    rm -rf /var/lib/apt/lists/*
COPY scripts/image-collect-iptables.sh /usr/local/bin/
RUN sh /usr/local/bin/image-collect-iptables.sh /out

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
