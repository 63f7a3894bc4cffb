# Minimal image: build tokd on Debian 12 and run it. The deploy issue extends this.
FROM debian:12-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential pkg-config \
      libpcre2-dev libcjson-dev libuv1-dev libmicrohttpd-dev check libsubunit-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make -j"$(nproc)" build/tokd

FROM debian:12-slim
RUN apt-get update && apt-get install -y --no-install-recommends libpcre2-8-0 libcjson1 libuv1 libmicrohttpd12 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/build/tokd /usr/local/bin/tokd
ENTRYPOINT ["tokd"]
