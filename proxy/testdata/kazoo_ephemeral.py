"""A kazoo client that holds an ephemeral node, for the expiry tests.

    kazoo_ephemeral.py HOST:PORT PATH TIMEOUT_SECONDS

Creates the ephemeral node PATH, prints "READY 0x<session>"
and then idles (kazoo answers nothing but pings) until stdin closes. A test
stops it with SIGSTOP to play a hung process.
"""
import sys

from kazoo.client import KazooClient

host, path, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
zk = KazooClient(hosts=host, timeout=timeout)
zk.start(timeout=15)
zk.create(path, b"", ephemeral=True)
print("READY", hex(zk.client_id[0]), flush=True)
sys.stdin.readline()
zk.stop()
zk.close()
