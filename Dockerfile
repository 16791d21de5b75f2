# Wharf container image: a multi-stage build, a small runtime image, a non-root user.
#
#   docker build -t wharf .
#   docker run -p 8080:8080 -e OPENAI_API_KEY=… -v $PWD/my.toml:/etc/wharf/wharf.toml:ro wharf
#
# The image holds `wharf` (the gateway) and `wharf-mock` (the offline mock provider).

FROM rust:1-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p wharf -p wharf-mock --bin wharf --bin wharf-mock \
    && strip target/release/wharf target/release/wharf-mock \
    && mkdir -p /state

# glibc and libgcc only; no shell, no package manager. Runs as uid 65532 (`nonroot`).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/wharf /usr/local/bin/wharf
COPY --from=build /src/target/release/wharf-mock /usr/local/bin/wharf-mock
COPY deploy/container.toml /etc/wharf/wharf.toml
COPY --from=build --chown=65532:65532 /state /var/lib/wharf
USER nonroot:nonroot
WORKDIR /var/lib/wharf
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/wharf"]
CMD ["serve", "-c", "/etc/wharf/wharf.toml"]
