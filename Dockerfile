# vcon-capture daemon image.
#   docker build -t vcon-capture .
#   docker run --network host --cap-add NET_RAW --cap-add NET_ADMIN \
#     -v /etc/vcon-capture:/etc/vcon-capture:ro -v vcon-data:/var/lib/vcon-capture \
#     -e CONSERVER_TOKEN vcon-capture
FROM python:3.11-slim AS build
# A C compiler for capture/_fastpath.c (the packet loop's compiled fast path; optional, but the
# daemon and ingest are several times slower per packet without it).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY capture capture
COPY conversation conversation
COPY delivery delivery
COPY adapters adapters
COPY vcon_capture vcon_capture
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
# libpcap compiles BPF filters (pcap_compile through ctypes); libcap2-bin grants the capture
# capability to the interpreter so the daemon runs as an unprivileged user.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpcap0.8 libcap2-bin \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/vcon-capture --create-home vcon \
 && mkdir -p /etc/vcon-capture /var/spool/pcaps \
 && chown vcon:vcon /var/spool/pcaps
COPY --from=build /install /usr/local
# Only what live capture needs: raw packet sockets (NET_RAW) and the ring/filter setup (NET_ADMIN).
RUN setcap cap_net_raw,cap_net_admin+eip "$(readlink -f /usr/local/bin/python3)"
COPY config/vcon-capture.example.yaml /etc/vcon-capture/vcon-capture.example.yaml
USER vcon
VOLUME ["/var/lib/vcon-capture"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s CMD python3 -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz').status != 200)"
ENTRYPOINT ["vcon-capture"]
CMD ["run", "--config", "/etc/vcon-capture/vcon-capture.yaml"]
