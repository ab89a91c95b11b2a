# aisecops: one static binary (serve, xds, all, token, policy, audit).
# Build:  docker build -t aisecops:dev .
# Used by deploy/docker-compose.yaml and deploy/kubernetes/.
FROM golang:1.26-alpine AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/aisecops ./cmd/aisecops

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/aisecops /usr/local/bin/aisecops
# State (development key, admin token, audit log) lives here; mount a volume.
ENV AISECOPS_HOME=/home/nonroot/.aisecops
USER nonroot:nonroot
# 9191 ext_authz gRPC, 8181 HTTP API and /metrics, 18000 xDS.
EXPOSE 9191 8181 18000
ENTRYPOINT ["/usr/local/bin/aisecops"]
# With no flags `all` listens on 127.0.0.1 only (plaintext is loopback-only), so
# nothing outside the container reaches it: pass --*-addr=:PORT with the TLS
# flags, as deploy/docker-compose.yaml and deploy/kubernetes/ do.
CMD ["all"]
