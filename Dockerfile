# Builds the firstcome host and the reference plugins; see docker-compose.yml.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN rustup target add wasm32-wasip2 \
    && cargo build --release --locked --bin firstcome \
    && cargo build --release --locked --manifest-path plugins/Cargo.toml \
        --target wasm32-wasip2 --target-dir plugins/target

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/firstcome /usr/local/bin/firstcome
# Where examples/campaigns (mounted at /campaigns) expects them: ../../plugins/target/...
COPY --from=build /src/plugins/target/wasm32-wasip2/release/*.wasm /plugins/target/wasm32-wasip2/release/
ENV FIRSTCOME_LISTEN=0.0.0.0:8080 FIRSTCOME_DATA_DIR=/data
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["firstcome"]
CMD ["serve"]
