# One image with every Paystream binary; docker-compose.yml picks the command.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins && \
    mkdir /out && cp target/release/paystream target/release/paystream-api \
    target/release/paystream-webhook target/release/paystream-reconciler target/release/stripe-sim /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && \
    rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 paystream
COPY --from=build /out/ /usr/local/bin/
USER paystream
