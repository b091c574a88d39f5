/*
 * mesos_like: a ZooKeeper C client (the library Mesos links) that behaves
 * like a Mesos master contending for leadership, used by the proxy tests.
 *
 *   mesos_like HOST:PORT ROOT
 *
 * It authenticates with digest credentials, creates an ephemeral sequential
 * json.info_ node with Mesos' EVERYONE_READ_CREATOR_ALL ACL, watches the
 * children of ROOT, runs a multi, prints "READY 0x<session>" and waits for
 * "CHECK" on stdin. Then it waits for the child watch to fire, checks that
 * its ephemeral still exists and is owned by the same session, writes once,
 * prints "RESULT ..." and exits 0 only if the session never expired and the
 * client never fell back to CONNECTING.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <pthread.h>
#define THREADED 1 /* the synchronous API of libzookeeper_mt, as Mesos uses it */
#include <zookeeper/zookeeper.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int connected, expired, disconnects, child_events, auth_done, auth_rc;

static void session_watcher(zhandle_t *zh, int type, int state, const char *path, void *ctx) {
  pthread_mutex_lock(&mu);
  if (type == ZOO_SESSION_EVENT) {
    if (state == ZOO_CONNECTED_STATE) connected = 1;
    else if (state == ZOO_EXPIRED_SESSION_STATE) expired = 1;
    else if (state == ZOO_CONNECTING_STATE) disconnects++;
  }
  pthread_cond_broadcast(&cv);
  pthread_mutex_unlock(&mu);
}

static void child_watcher(zhandle_t *zh, int type, int state, const char *path, void *ctx) {
  pthread_mutex_lock(&mu);
  if (type == ZOO_CHILD_EVENT) child_events++;
  pthread_cond_broadcast(&cv);
  pthread_mutex_unlock(&mu);
}

static void auth_completion(int rc, const void *data) {
  pthread_mutex_lock(&mu);
  auth_done = 1; auth_rc = rc;
  pthread_cond_broadcast(&cv);
  pthread_mutex_unlock(&mu);
}

static int wait_for(int *flag, int seconds) {
  struct timespec ts; clock_gettime(CLOCK_REALTIME, &ts); ts.tv_sec += seconds;
  pthread_mutex_lock(&mu);
  while (!*flag) if (pthread_cond_timedwait(&cv, &mu, &ts) != 0) break;
  int v = *flag; pthread_mutex_unlock(&mu);
  return v;
}

#define CHECK(expr, what) do { int rc_ = (expr); if (rc_ != ZOK) { printf("FAIL %s: %s\n", what, zerror(rc_)); return 1; } } while (0)

int main(int argc, char **argv) {
  if (argc != 3) { fprintf(stderr, "usage: %s HOST:PORT ROOT\n", argv[0]); return 2; }
  const char *root = argv[2];
  zoo_set_debug_level(ZOO_LOG_LEVEL_WARN);
  zhandle_t *zh = zookeeper_init(argv[1], session_watcher, 10000, 0, 0, 0);
  if (!zh || !wait_for(&connected, 15)) { printf("FAIL connect\n"); return 1; }
  long long sid = zoo_client_id(zh)->client_id;

  CHECK(zoo_add_auth(zh, "digest", "mesos:secret", 12, auth_completion, 0), "add_auth");
  if (!wait_for(&auth_done, 10) || auth_rc != ZOK) { printf("FAIL auth %d\n", auth_rc); return 1; }

  struct ACL acl[] = {{ZOO_PERM_READ, ZOO_ANYONE_ID_UNSAFE}, {ZOO_PERM_ALL, ZOO_AUTH_IDS}};
  struct ACL_vector mesos_acl = {2, acl};
  char prefix[512], mine[512];
  snprintf(prefix, sizeof prefix, "%s/json.info_", root);
  const char *info = "{\"hostname\":\"master1\",\"port\":5050}";
  CHECK(zoo_create(zh, prefix, info, strlen(info), &mesos_acl, ZOO_EPHEMERAL_SEQUENTIAL, mine, sizeof mine), "create json.info_");

  struct String_vector kids;
  CHECK(zoo_wget_children(zh, root, child_watcher, 0, &kids), "wget_children");
  deallocate_String_vector(&kids);

  char mpath[512], created[512];
  snprintf(mpath, sizeof mpath, "%s/multi", root);
  zoo_op_t ops[4]; zoo_op_result_t results[4];
  zoo_create_op_init(&ops[0], mpath, "a", 1, &ZOO_OPEN_ACL_UNSAFE, 0, created, sizeof created);
  zoo_set_op_init(&ops[1], mpath, "b", 1, 0, NULL);
  zoo_check_op_init(&ops[2], mpath, 1);
  zoo_delete_op_init(&ops[3], mpath, -1);
  CHECK(zoo_multi(zh, 4, ops, results), "multi");

  printf("READY 0x%llx %s\n", sid, mine); fflush(stdout);
  char line[64];
  if (!fgets(line, sizeof line, stdin)) { printf("FAIL no CHECK\n"); return 1; }

  int got_child = wait_for(&child_events, 20);
  struct Stat st; char buf[256]; int len = sizeof buf, rc = ZCONNECTIONLOSS;
  for (int i = 0; i < 100 && rc == ZCONNECTIONLOSS; i++) {
    len = sizeof buf;
    rc = zoo_get(zh, mine, 0, buf, &len, &st);
    if (rc == ZCONNECTIONLOSS) usleep(100000);
  }
  CHECK(rc, "get own json.info_ after the move");
  rc = ZCONNECTIONLOSS;
  for (int i = 0; i < 100 && rc == ZCONNECTIONLOSS; i++) {
    rc = zoo_set(zh, root, "after", 5, -1);
    if (rc == ZCONNECTIONLOSS) usleep(100000);
  }
  CHECK(rc, "set after the move");
  long long now_sid = zoo_client_id(zh)->client_id;
  pthread_mutex_lock(&mu);
  printf("RESULT sid=0x%llx now=0x%llx owner=0x%llx child_event=%d expired=%d disconnects=%d\n",
         sid, now_sid, (long long)st.ephemeralOwner, got_child, expired, disconnects);
  int ok = got_child && !expired && disconnects == 0 && now_sid == sid && st.ephemeralOwner == sid;
  pthread_mutex_unlock(&mu);
  zookeeper_close(zh);
  return ok ? 0 : 1;
}
