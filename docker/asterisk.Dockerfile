# Asterisk 22 from Debian sid packages with this repository's asterisk-config/, as the sandbox
# (speakd/sandbox.py) runs it, for docker/compose.yaml. Build context: the repository root.
# It is the test PBX of the sandbox (ARI user speakd/speakd, the test dialplan), not a PBX to
# put in front of callers: no SIP is loaded.
# DEBIAN_IMAGE: any Debian sid image (docker/local-base-images makes one without a registry).
ARG DEBIAN_IMAGE=debian:sid-slim
FROM ${DEBIAN_IMAGE}
# --no-install-recommends: the packages the sandbox's debootstrap --include installs. Unpinned
# (DL3008): sid's versions last days, and the sandbox takes what sid has too.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends asterisk asterisk-modules \
    && rm -rf /var/lib/apt/lists/* \
    && test -f /usr/lib/x86_64-linux-gnu/asterisk/modules/chan_websocket.so \
    && rm -rf /etc/asterisk && mkdir /etc/asterisk
# Exactly what the sandbox installs: every *.conf (replacing the stock configuration) and sounds/.
COPY asterisk-config/*.conf /etc/asterisk/
COPY asterisk-config/sounds/ /usr/share/asterisk/sounds/
# In a container the loopback is the container's own: ARI must listen on the compose network
# for speakd (and on the published port for the host). Same port, any address.
RUN sed -i 's/^bindaddr *= *127\.0\.0\.1 *$/bindaddr = 0.0.0.0/' /etc/asterisk/http.conf \
    && grep -q '^bindaddr = 0.0.0.0$' /etc/asterisk/http.conf \
    && install -d -o asterisk -g asterisk /var/spool/asterisk/recording /var/run/asterisk /var/log/asterisk \
    && chown -R asterisk:asterisk /var/lib/asterisk /var/spool/asterisk /var/log/asterisk /var/run/asterisk
# Debian's package picks the asterisk uid: a name, not a number (DL3066).
# hadolint ignore=DL3066
USER asterisk:asterisk
EXPOSE 18088
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["asterisk", "-rx", "core waitfullybooted"]
# -f: foreground (the container's main process), -n: no colour in the log.
CMD ["asterisk", "-f", "-n"]
