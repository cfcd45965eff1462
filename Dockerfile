# syntax=docker/dockerfile:1
#
# waymark container image.
#
#   docker build -t registry.example.com/waymark:0.1.0 .
#
# Two stages: the binary is compiled on rust:1-bookworm (rdkafka builds its
# bundled librdkafka with make, perl, pkg-config and zlib), then copied alone
# onto distroless cc-debian12: glibc and nothing else, no shell, no package
# manager, running as UID/GID 65532. BuildKit (the default builder since
# Docker 23) is needed for the cache mounts.

FROM rust:1-bookworm AS build
# Debian's package versions move with the base image's point releases;
# pinning them would break the build at the next one.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends make perl pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# .dockerignore lets in only what the build reads.
COPY . .
# The cache mounts keep downloaded crates and compiled dependencies between
# builds; they are not part of any layer, so the binary and the libraries it
# needs beyond the runtime image (scripts/image-libs: libz.so.1) are copied
# out to /out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin waymark \
 && install -D -m 0755 target/release/waymark /out/root/usr/local/bin/waymark \
 && scripts/image-libs /out/root/usr/local/bin/waymark /out/root \
 && install -d -m 0750 /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="waymark" \
      org.opencontainers.image.description="Email engagement tracking edge service: open pixels, click redirects, classified events"
COPY --from=build /out/root/ /
# The data directory (development key ring, events file, Kafka spool) is the
# only place waymark writes; everything else can be read-only.
COPY --from=build --chown=65532:65532 /out/data/ /var/lib/waymark/
ENV WAYMARK_LISTEN=0.0.0.0:8080 \
    WAYMARK_DATA_DIR=/var/lib/waymark \
    WAYMARK_LOG_FORMAT=json
USER 65532:65532
WORKDIR /var/lib/waymark
VOLUME ["/var/lib/waymark"]
# 8080: public listener (pixels, clicks, /healthz, /readyz).
# 9090: admin listener (/metrics, /v1/instrument) when WAYMARK_ADMIN_LISTEN
# is set, e.g. 0.0.0.0:9090; keep it off the public network.
EXPOSE 8080 9090
# The binary is its own probe (GET http://127.0.0.1:8080/healthz, exit 0 on
# 200): no shell or curl needed. Pass --url if WAYMARK_LISTEN's port changes.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/waymark", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/waymark"]
CMD ["serve"]
