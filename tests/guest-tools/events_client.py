"""Guest-side events client for the events end-to-end test: talks to the agent's Unix socket
($MSBVM_EVENTS_SOCKET) with nothing but the standard library, as a user's program would.

    events_client.py emit N            N events "py.step" {"i": 0..N-1}, one connection
    events_client.py burst N           N events "burst" {"seq": i} as fast as possible
    events_client.py bad               a malformed line, a 1 MiB line, then a good event
    events_client.py ask               sends "py.question" with id "q1", prints the reply
    events_client.py serve             answers one "ask" host request with "answer"
    events_client.py deaf              subscribes to everything and reads nothing until
                                       /tmp/flood-done exists
"""

import json
import os
import socket
import sys
import time

PATH = os.environ.get("MSBVM_EVENTS_SOCKET", "/run/msbvm/events.sock")


def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(PATH)
    return s


def send(s, obj):
    s.sendall((json.dumps(obj) + "\n").encode())


def lines(s):
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield json.loads(line)


def main():
    verb = sys.argv[1]
    if verb == "emit":
        s = connect()
        for i in range(int(sys.argv[2])):
            send(s, {"type": "py.step", "data": {"i": i}})
        print("pid", os.getpid())
    elif verb == "burst":
        s = connect()
        n = int(sys.argv[2])
        payload = "".join(
            json.dumps({"type": "burst", "data": {"seq": i}}) + "\n" for i in range(n)
        ).encode()
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        # Anything the agent says back (it says nothing for good events).
        rest = s.recv(65536)
        print("burst-sent", n, "reply-bytes", len(rest))
    elif verb == "bad":
        s = connect()
        s.settimeout(20)
        it = lines(s)
        s.sendall(b"{not json\n")
        print("malformed:", json.dumps(next(it)))
        s.sendall(b'{"type":"big","data":"' + b"x" * (1 << 20) + b'"}\n')
        print("oversized:", json.dumps(next(it)))
        send(s, {"type": "after.bad", "data": "still-here"})
        s.shutdown(socket.SHUT_WR)
        print("after-bad-sent")
    elif verb == "ask":
        s = connect()
        s.settimeout(60)
        send(s, {"type": "py.question", "id": "q1", "data": {"q": "ready?"}})
        for ev in lines(s):
            if ev.get("reply_to") == "q1":
                print("reply:", json.dumps(ev, sort_keys=True))
                return
    elif verb == "serve":
        s = connect()
        s.settimeout(60)
        send(s, {"subscribe": ["ask"]})
        for ev in lines(s):
            if "subscribed" in ev:
                print("subscribed", flush=True)
                continue
            if ev.get("type") == "ask":
                send(s, {"type": "answer", "reply_to": ev["id"], "data": {"got": ev["data"]}})
                print("answered", ev["id"], flush=True)
                time.sleep(0.5)
                return
    elif verb == "deaf":
        s = connect()
        send(s, {"subscribe": ["*"]})
        while not os.path.exists("/tmp/flood-done"):
            time.sleep(0.5)
        # Now read what is waiting: a bounded number of events and a dropped count.
        s.settimeout(5)
        got, dropped = 0, 0
        try:
            for ev in lines(s):
                if ev.get("type") == "msbvm.dropped":
                    dropped += ev["data"]["count"]
                elif ev.get("type") == "flood":
                    got += 1
        except (socket.timeout, OSError):
            pass
        print("deaf got", got, "dropped", dropped)
    else:
        sys.exit("unknown verb " + verb)


main()
