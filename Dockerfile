# wau-ingest container image. Needs BuildKit (the default builder since Docker 23):
#   docker build -t wau-ingest:$(git rev-parse --short HEAD) .
# The runtime image is distroless: no shell, no package manager; the health check is the
# binary's own `healthcheck` subcommand.

FROM rust:1-bookworm AS builder
WORKDIR /src
# The whole (filtered, see .dockerignore) tree: Cargo.toml may name targets anywhere in it.
COPY . .
# Cargo's registry and target dir live in BuildKit caches so rebuilds are incremental; the
# binary is copied out of the cache mount in the same step. --locked: build exactly Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin wau-ingest \
    && install -D -m 0755 target/release/wau-ingest /out/wau-ingest

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/wau-ingest /usr/local/bin/wau-ingest
COPY contracts/ /app/contracts/
WORKDIR /app
ENV WAU_INGEST_CONTRACT_PATH=/app/contracts/wau_audit_log.toml \
    WAU_INGEST_HTTP_LISTEN=0.0.0.0:9464
# A fixed numeric uid (the ECS task definition runs as "10001" too); it owns nothing in the
# image, so the root filesystem can be mounted read-only.
USER 10001
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/wau-ingest", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/wau-ingest"]
CMD ["run"]
