# Builds the firstcome host; see docker-compose.yml.
FROM rust:1.90-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin firstcome

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/firstcome /usr/local/bin/firstcome
ENV FIRSTCOME_LISTEN=0.0.0.0:8080 FIRSTCOME_DATA_DIR=/data
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["firstcome"]
CMD ["serve"]
