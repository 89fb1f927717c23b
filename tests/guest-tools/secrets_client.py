"""Guest-side clients of the secrets suite (tests/tests/secrets_nested.rs), stdlib only.

Runs in the sandbox as `python3 /e2e/client.py COMMAND ARGS...` and prints one short line
that the suite checks. The placeholders come from the environment (API_KEY, QB_KEY), as any
program in the guest would read them. E2E_CAFILE, when set, is the CA to trust instead of
the defaults (used where nothing intercepts: the test CA of the upstreams).
"""
import http.client
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request


def context(cafile=None):
    return ssl.create_default_context(cafile=cafile or os.environ.get("E2E_CAFILE"))


def status(req):
    """The HTTP status of a urllib request (errors included), or what stopped it."""
    try:
        with urllib.request.urlopen(req, context=context(), timeout=60) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception as e:  # noqa: BLE001 - the check wants to see what happened
        return "error:" + type(e).__name__


def pct(url, key):
    """Every byte of the placeholder percent-encoded, in the query."""
    return status(url + "?k=" + "".join("%%%02X" % b for b in key.encode()))


def json_escaped(url, key):
    """Every character of the placeholder JSON-escaped (\\uXXXX), in a POST body."""
    body = ('{"k": "%s"}' % "".join("\\u%04x" % ord(c) for c in key)).encode()
    headers = {"Content-Type": "application/json"}
    return status(urllib.request.Request(url, data=body, headers=headers))


def split(host, path, key):
    """The placeholder split across two TLS writes half a second apart."""
    half = len(key) // 2
    with socket.create_connection((host, 443), timeout=60) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with context().wrap_socket(raw, server_hostname=host) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Api-Key: {key[:half]}".encode())
            time.sleep(0.5)
            s.sendall(f"{key[half:]}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            try:
                while b"\r\n" not in data and (chunk := s.recv(65536)):
                    data += chunk
            except (ssl.SSLError, OSError):
                pass
    parts = data.split(b" ", 2)
    return parts[1].decode() if len(parts) > 1 else "closed"


def body(url, key):
    """urllib POST: QB_KEY's placeholder in the body, API_KEY's in a header; the echo."""
    data = ("k=" + os.environ["QB_KEY"]).encode()
    req = urllib.request.Request(url, data=data, headers={"X-Api-Key": key})
    with urllib.request.urlopen(req, context=context(), timeout=60) as r:
        return r.read().decode()


def issuer(host, cafile=None):
    """The common name of the issuer of the certificate the guest sees for host:443."""
    with socket.create_connection((host, 443), timeout=60) as raw:
        with context(cafile).wrap_socket(raw, server_hostname=host) as s:
            fields = dict(x[0] for x in s.getpeercert()["issuer"])
            return fields.get("commonName", "?")


def keepalive(host, key):
    """100 requests on one http.client connection, the 50th to /deny/x."""
    conn = http.client.HTTPSConnection(host, 443, context=context(), timeout=60)
    codes, ports = [], set()
    for i in range(1, 101):
        path = "/deny/x" if i == 50 else f"/ka/{i}"
        conn.request("GET", path, headers={"X-Api-Key": key})
        ports.add(conn.sock.getsockname()[1])
        r = conn.getresponse()
        r.read()
        codes.append(r.status)
    at = ",".join(str(i + 1) for i, c in enumerate(codes) if c != 200)
    return f"200x{codes.count(200)} 403x{codes.count(403)} at={at} conns={len(ports)}"


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    key = os.environ.get("API_KEY", "no-key")
    if cmd == "pct":
        print(pct(args[0], key))
    elif cmd == "json":
        print(json_escaped(args[0], key))
    elif cmd == "split":
        print(split(args[0], args[1], key))
    elif cmd == "body":
        print(body(args[0], key))
    elif cmd == "issuer":
        print(issuer(*args))
    elif cmd == "keepalive":
        print(keepalive(args[0], key))
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
