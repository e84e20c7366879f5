# syntax=docker/dockerfile:1
# The Palisade operator image: the release binary on a distroless, non-root base.
#   docker build -t palisade:dev .
# The build stage runs `make build`, the same command `make test` builds the e2e suite's
# operator with, so what the image contains is what the tests ran.

ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the crate registry and build between image builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    make build \
 && install -D -m 0755 target/release/palisade /out/palisade

# glibc, libgcc and CA certificates, no shell, uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="palisade" \
      org.opencontainers.image.description="Kubernetes operator that runs AI agents in hardened sandboxes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=build /out/palisade /usr/local/bin/palisade
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/palisade"]
CMD ["run", "--leader-elect", "--log-json"]
