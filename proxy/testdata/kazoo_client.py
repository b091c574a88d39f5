"""A kazoo client for the proxy tests.

    kazoo_client.py HOST:PORT ROOT

Exercises create/get/set/delete with versions, an ephemeral sequential
node, a digest ACL, a transaction and a data watch; prints
"READY 0x<session> <ephemeral>", waits for a line on stdin, then checks that
the watch fired, the ephemeral survived under the same session and a write
works, and prints "RESULT <json>". Exit 0 only if all held and the
connection state never left CONNECTED.
"""
import json
import sys
import threading

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NoAuthError
from kazoo.security import make_digest_acl

host, root = sys.argv[1], sys.argv[2]
states = []
zk = KazooClient(hosts=host, timeout=10.0)
zk.add_listener(lambda s: states.append(str(s)))
zk.start(timeout=15)
sid = zk.client_id[0]

zk.create(root + "/data", b"v1")
value, stat = zk.get(root + "/data")
assert value == b"v1" and stat.version == 0, (value, stat)
zk.set(root + "/data", b"v2", version=0)
try:
    zk.set(root + "/data", b"stale", version=0)
    raise SystemExit("stale conditional set succeeded")
except BadVersionError:
    pass
eph = zk.create(root + "/e-", b"", ephemeral=True, sequence=True)
assert eph.startswith(root + "/e-") and len(eph) == len(root + "/e-") + 10, eph

zk.add_auth("digest", "k:pw")
zk.create(root + "/secret", b"s", acl=[make_digest_acl("k", "pw", all=True)])
stranger = KazooClient(hosts=host, timeout=10.0)
stranger.start(timeout=15)
try:
    stranger.get(root + "/secret")
    raise SystemExit("digest ACL not enforced")
except NoAuthError:
    pass
stranger.stop()
stranger.close()

t = zk.transaction()
t.create(root + "/t", b"1")
t.set_data(root + "/t", b"2")
t.check(root + "/t", 1)
t.delete(root + "/t")
results = t.commit()
assert not any(isinstance(r, Exception) for r in results), results

fired = threading.Event()
zk.get(root + "/data", watch=lambda e: fired.set())
print("READY", hex(sid), eph, flush=True)
sys.stdin.readline()

ok_fired = fired.wait(20)
_, estat = zk.retry(zk.get, eph)
zk.retry(zk.set, root + "/data", b"after")
result = {
    "fired": ok_fired,
    "sid": hex(sid),
    "now": hex(zk.client_id[0]),
    "owner": hex(estat.ephemeralOwner),
    "states": states,
}
print("RESULT", json.dumps(result), flush=True)
ok = ok_fired and zk.client_id[0] == sid and estat.ephemeralOwner == sid and states == ["CONNECTED"]
zk.stop()
zk.close()
sys.exit(0 if ok else 1)
