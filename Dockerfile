# zeusd, the daemon, in a container image (docs/deployment.md#containers).
#
#   docker build -t zeusd .            # or: podman build -t zeusd .  /  buildah bud -t zeusd .
#   docker run -d --gpus all --cap-add SYS_ADMIN -v /run/zeusd:/run/zeusd zeusd
#
# The NVIDIA driver's libnvidia-ml.so is not in the image: the NVIDIA Container Toolkit mounts
# the host's (it must match the host's kernel driver), as it does for nvidia-smi.
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN python3 -m venv /opt/zeusd \
    && /opt/zeusd/bin/pip install --no-cache-dir --disable-pip-version-check /src \
    && /opt/zeusd/bin/zeusd --version

FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/zeusd /opt/zeusd
ENV PATH=/opt/zeusd/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=utility
LABEL org.opencontainers.image.title="zeusd" \
      org.opencontainers.image.description="GPU power and clock control for unprivileged clients (JSON-RPC 2.0)" \
      org.opencontainers.image.licenses="Apache-2.0"
# Root with CAP_SYS_ADMIN is what NVML's setters need; give the container nothing else.
USER 0:0
# Clients reach the daemon through this directory, bind-mounted from the host.
VOLUME ["/run/zeusd"]
ENTRYPOINT ["zeusd"]
# Restore records go in a 0700 directory of their own beside the socket: on the host mount, so
# they outlive a crashed container, and apart from the socket the clients see.
CMD ["--socket-path", "/run/zeusd/zeusd.sock", "--state-dir", "/run/zeusd/state"]
