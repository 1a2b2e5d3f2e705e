#!/usr/bin/env python3
"""Print the dqlite messages a client exchanged, from an strace log.

Lets you see exactly what a real client (Debian's `dqlite` shell, a go-dqlite
program) sends and receives, against C dqlite or against dqlite-rs, without a
packet capture. Only the client is traced; nothing is sent anywhere.

    apt-get install -y strace
    strace -f -qq -e trace=connect,read,write,close -xx -s 1048576 -o /tmp/t.txt \
        dqlite -s 127.0.0.1:9001 demo < statements.sql
    python3 scripts/wiretrace.py /tmp/t.txt

Output: one line per message, `cN >` for requests and `cN <` for responses on
the N-th connection the client opened. See docs/compat-notes.md.
"""

import re
import sys

REQUESTS = {
    0: "LEADER", 1: "CLIENT", 2: "HEARTBEAT", 3: "OPEN", 4: "PREPARE",
    5: "EXEC", 6: "QUERY", 7: "FINALIZE", 8: "EXEC_SQL", 9: "QUERY_SQL",
    10: "INTERRUPT", 11: "CONNECT", 12: "ADD", 13: "ASSIGN", 14: "REMOVE",
    15: "DUMP", 16: "CLUSTER", 17: "TRANSFER", 18: "DESCRIBE", 19: "WEIGHT",
}
RESPONSES = {
    0: "FAILURE", 1: "SERVER", 2: "WELCOME", 3: "SERVERS", 4: "DB", 5: "STMT",
    6: "RESULT", 7: "ROWS", 8: "EMPTY", 9: "FILES", 10: "METADATA",
}

CONNECT = re.compile(r"\d+\s+connect\((\d+), \{sa_family=AF_INET6?, sin6?_port=htons\((\d+)\)")
CLOSE = re.compile(r"\d+\s+close\((\d+)\)")
DATA = re.compile(r'\d+\s+(read|write)\((\d+), "((?:\\x[0-9a-f]{2})*)"')


def u64(b, off=0):
    return int.from_bytes(b[off:off + 8], "little")


def text(b, off=0):
    return b[off:].split(b"\0", 1)[0].decode("utf-8", "replace")


def describe_request(kind, schema, body):
    name = REQUESTS.get(kind, f"type{kind}")
    extra = ""
    if kind in (8, 9):  # EXEC_SQL, QUERY_SQL: db u64, sql text, params
        sql = text(body, 8)
        params = body[8 + (len(sql.encode()) + 1 + 7) // 8 * 8:]
        extra = f"db={u64(body)} sql={sql!r}"
        if params:
            extra += f" params={params.hex()}"
    elif kind == 3:
        extra = f"name={text(body)!r}"
    elif kind == 4:
        extra = f"db={u64(body)} sql={text(body, 8)!r}"
    elif kind in (5, 6, 7):
        extra = f"db={int.from_bytes(body[0:4], 'little')} stmt={int.from_bytes(body[4:8], 'little')}"
    elif kind in (16, 18):
        extra = f"format={u64(body)}"
    elif kind == 1:
        extra = f"id={u64(body)}"
    return f"{name} schema={schema} {extra}".rstrip()


def describe_response(kind, schema, body):
    name = RESPONSES.get(kind, f"type{kind}")
    extra = ""
    if kind == 0:
        extra = f"code={u64(body)} message={text(body, 8)!r}"
    elif kind == 1:
        extra = f"id={u64(body)} address={text(body, 8)!r}"
    elif kind == 6:
        extra = f"last_insert_id={u64(body)} rows_affected={u64(body, 8)}"
    elif kind == 7:
        marker = body[-8:].hex()
        end = {"ffffffffffffffff": "DONE", "eeeeeeeeeeeeeeee": "PART"}.get(marker, marker)
        extra = f"ncols={u64(body)} bytes={len(body)} end={end}"
    elif kind == 3:
        extra = f"n={u64(body)}"
    return f"{name} schema={schema} {extra}".rstrip()


class Conn:
    def __init__(self, number, port):
        self.number = number
        self.port = port
        self.out = b""
        self.inp = b""
        self.handshake_done = False

    def feed(self, direction, data):
        if direction == "write":
            self.out += data
            if not self.handshake_done and len(self.out) >= 8:
                print(f"c{self.number} > handshake version={u64(self.out):#x} (port {self.port})")
                self.out = self.out[8:]
                self.handshake_done = True
            if self.handshake_done:
                self.out = self.drain(self.out, ">", describe_request)
        else:
            self.inp += data
            self.inp = self.drain(self.inp, "<", describe_response)

    def drain(self, buf, arrow, describe):
        while len(buf) >= 8:
            words = int.from_bytes(buf[0:4], "little")
            size = 8 + words * 8
            if len(buf) < size:
                break
            print(f"c{self.number} {arrow} {describe(buf[4], buf[5], buf[8:size])}")
            buf = buf[size:]
        return buf


def main(path):
    conns = {}
    count = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = CONNECT.match(line)
            if m:
                count += 1
                conns[m.group(1)] = Conn(count, m.group(2))
                continue
            m = CLOSE.match(line)
            if m and m.group(1) in conns:
                print(f"c{conns.pop(m.group(1)).number} closed")
                continue
            m = DATA.match(line)
            if m and m.group(2) in conns:
                data = bytes.fromhex(m.group(3).replace("\\x", ""))
                conns[m.group(2)].feed(m.group(1), data)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
