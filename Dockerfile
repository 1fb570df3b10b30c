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
# The reference plugins, in the folder plugins are read from (plugins.dir); examples/campaigns
# (mounted at /campaigns) names them from there.
COPY --from=build /src/plugins/target/wasm32-wasip2/release/*.wasm /plugins/
# Runs as a user of its own that owns only its data folder.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin firstcome \
    && mkdir -p /data && chown firstcome:firstcome /data
USER firstcome
# The admin plane listens apart (publish 8081 only where operators are).
ENV FIRSTCOME_LISTEN=0.0.0.0:8080 FIRSTCOME_ADMIN_LISTEN=0.0.0.0:8081 \
    FIRSTCOME_DATA_DIR=/data FIRSTCOME_PLUGINS__DIR=/plugins
VOLUME /data
EXPOSE 8080 8081
ENTRYPOINT ["firstcome"]
CMD ["serve"]
