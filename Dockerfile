# stor: build with `docker build -t stor .`; see README.md, "Docker".
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY . /src
RUN pip install --no-cache-dir . \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/stor --create-home --shell /usr/sbin/nologin stor

USER stor
# Working directory of the service: ./data here is the embedded default's storage.
WORKDIR /var/lib/stor

EXPOSE 8080
# Mount the configuration here (see config.json.example) and the storage directories it names.
ENV CONFIG_FILE=/etc/stor/config.json
CMD ["stor", "serve", "--host", "0.0.0.0", "--port", "8080"]
