"""The balancer in front of the replicas, in every testbed here (container/stack.py,
testbed/netns.py): HAProxy's configuration as a Kubernetes Service would behave."""

from __future__ import annotations

# The stand-in for a Kubernetes Service: HAProxy (Debian's), which, as a Service does,
# sends to the replicas whose readiness passes and never sends a request twice: no
# retries, no redispatch. A replica is out after two failed /readyz checks a second apart
# and back after two good ones (a Service follows the pods' readinessProbe the same way).
FRONT_CONF = """global
    maxconn 4096
    pidfile {workdir}/haproxy.pid
    log stderr format raw local0 warning

defaults
    mode http
    log global
    option httplog
    option http-keep-alive
    retries 0
    timeout connect 2s
    timeout client 75s
    timeout server 75s
    timeout http-keep-alive 30s

frontend front
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 1s fall 2 rise 2
{servers}
"""
