#include <stdio.h>
#include "czk.h"
#include "_cgo_export.h"

/* Every callback below runs on one of the C client's own threads (the
 * completion thread in libzookeeper_mt). They only copy their arguments into
 * Go, which hands them to a channel or a queue; nothing blocks. */

static void watcher(zhandle_t *zh, int type, int state, const char *path, void *ctx) {
  czkGoWatch((uintptr_t)ctx, type, state, (char *)path);
}

static void string_done(int rc, const char *value, const void *data) {
  czkGoString((uintptr_t)data, rc, (char *)value);
}

static void strings_done(int rc, const struct String_vector *v, const void *data) {
  czkGoStrings((uintptr_t)data, rc, (struct String_vector *)v);
}

static void data_done(int rc, const char *value, int len, const struct Stat *st, const void *data) {
  czkGoData((uintptr_t)data, rc, (char *)value, len, (struct Stat *)st);
}

static void stat_done(int rc, const struct Stat *st, const void *data) {
  czkGoData((uintptr_t)data, rc, NULL, -1, (struct Stat *)st);
}

static void void_done(int rc, const void *data) {
  czkGoVoid((uintptr_t)data, rc);
}

void czk_quiet(void) {
  /* The emulator's output is its own lines only. */
  static FILE *devnull;
  zoo_set_debug_level(0);
  if (!devnull) devnull = fopen("/dev/null", "w");
  if (devnull) zoo_set_log_stream(devnull);
}

zhandle_t *czk_init(const char *hosts, int timeout_ms, uintptr_t h) {
  return zookeeper_init(hosts, watcher, timeout_ms, 0, (void *)h, 0);
}

int czk_acreate(zhandle_t *zh, const char *path, const char *data, int len, int creator_all, int flags, uintptr_t h) {
  /* Mesos' ACL when the zk URL carries credentials: EVERYONE_READ_CREATOR_ALL. */
  struct ACL acl[] = {{ZOO_PERM_READ, ZOO_ANYONE_ID_UNSAFE}, {ZOO_PERM_ALL, ZOO_AUTH_IDS}};
  struct ACL_vector v = {2, acl};
  return zoo_acreate(zh, path, data, len, creator_all ? &v : &ZOO_OPEN_ACL_UNSAFE, flags, string_done, (void *)h);
}

int czk_aget_children(zhandle_t *zh, const char *path, int watch, uintptr_t h) {
  return zoo_aget_children(zh, path, watch, strings_done, (void *)h);
}

int czk_aget(zhandle_t *zh, const char *path, int watch, uintptr_t h) {
  return zoo_aget(zh, path, watch, data_done, (void *)h);
}

int czk_aexists(zhandle_t *zh, const char *path, int watch, uintptr_t h) {
  return zoo_aexists(zh, path, watch, stat_done, (void *)h);
}

int czk_adelete(zhandle_t *zh, const char *path, int version, uintptr_t h) {
  return zoo_adelete(zh, path, version, void_done, (void *)h);
}

int czk_add_auth(zhandle_t *zh, const char *scheme, const char *cert, int len, uintptr_t h) {
  return zoo_add_auth(zh, scheme, cert, len, void_done, (void *)h);
}

char *czk_sv_at(const struct String_vector *v, int i) { return v->data[i]; }

/* The state and event constants are extern variables in zookeeper.h. */
int czk_state(int which) {
  switch (which) {
  case 0: return ZOO_CONNECTING_STATE;
  case 1: return ZOO_ASSOCIATING_STATE;
  case 2: return ZOO_CONNECTED_STATE;
  case 3: return ZOO_EXPIRED_SESSION_STATE;
  case 4: return ZOO_AUTH_FAILED_STATE;
  }
  return -1;
}

int czk_event(int which) {
  switch (which) {
  case 0: return ZOO_SESSION_EVENT;
  case 1: return ZOO_CREATED_EVENT;
  case 2: return ZOO_DELETED_EVENT;
  case 3: return ZOO_CHANGED_EVENT;
  case 4: return ZOO_CHILD_EVENT;
  case 5: return ZOO_NOTWATCHING_EVENT;
  }
  return -1;
}
