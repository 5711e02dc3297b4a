# syntax=docker/dockerfile:1
# One image with every Paystream binary; docker-compose.yml picks the command.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# --locked: the image builds what Cargo.lock says, as CI does. The cache mounts keep the
# registry and build output between builds (they are not part of the image).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins && \
    mkdir /out && cp target/release/paystream target/release/paystream-api \
    target/release/paystream-webhook target/release/paystream-reconciler target/release/stripe-sim /out/

FROM debian:bookworm-slim
# libssl3: librdkafka's TLS and SASL SCRAM link the system OpenSSL (the build stage's
# image has libssl-dev and pkg-config).
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl libssl3 && \
    rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 paystream
COPY --from=build /out/ /usr/local/bin/
USER paystream
