/* C side of package czk: trampolines from the ZooKeeper C client's threads
 * into Go, and the few calls that need C-only constants. */
#ifndef CZK_H
#define CZK_H
#include <stdint.h>
#define THREADED 1
#include <zookeeper/zookeeper.h>

void czk_quiet(void);
zhandle_t *czk_init(const char *hosts, int timeout_ms, uintptr_t h);
int czk_acreate(zhandle_t *zh, const char *path, const char *data, int len, int creator_all, int flags, uintptr_t h);
int czk_aget_children(zhandle_t *zh, const char *path, int watch, uintptr_t h);
int czk_aget(zhandle_t *zh, const char *path, int watch, uintptr_t h);
int czk_aexists(zhandle_t *zh, const char *path, int watch, uintptr_t h);
int czk_adelete(zhandle_t *zh, const char *path, int version, uintptr_t h);
int czk_add_auth(zhandle_t *zh, const char *scheme, const char *cert, int len, uintptr_t h);
char *czk_sv_at(const struct String_vector *v, int i);
int czk_state(int which);
int czk_event(int which);
#endif
