# syntax=docker/dockerfile:1
# waymark: multi-stage build. The builder compiles with the bundled
# librdkafka (C compiler, make, perl, pkg-config, zlib; no cmake); the
# runtime is distroless, non-root, with no shell: the binary is its own
# health probe (`waymark healthcheck`).

FROM rust:1-bookworm AS build
# Debian's versions move with the base image's point releases; pinning them
# would break the build at the next one without making it more reproducible.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends make perl pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY data ./data
COPY benches ./benches
RUN cargo build --release --locked --bin waymark \
 && install -D -m 0755 target/release/waymark /out/waymark \
 && install -d -m 0755 -o 65532 -g 65532 /out/var/lib/waymark

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/waymark /usr/local/bin/waymark
COPY --from=build --chown=65532:65532 /out/var/lib/waymark /var/lib/waymark
ENV WAYMARK_LISTEN=0.0.0.0:8080 \
    WAYMARK_DATA_DIR=/var/lib/waymark \
    WAYMARK_LOG_FORMAT=json
USER 65532:65532
EXPOSE 8080 9090
VOLUME ["/var/lib/waymark"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/waymark", "healthcheck", "--url", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/waymark"]
CMD ["serve"]
