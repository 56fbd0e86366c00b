// Prints libmemcached's ketama placement of keys, the reference for ketama_test.go.
// Build and run (needs libmemcached-dev):
//   cc -o /tmp/ketama_ref upstream/testdata/ketama_libmemcached.c -lmemcached
//   /tmp/ketama_ref > upstream/testdata/ketama_libmemcached.txt
//   /tmp/ketama_ref 11211 > upstream/testdata/ketama_libmemcached_11211.txt
// With an argument every server listens on that port (libmemcached names servers on 11211
// without the port). Output: a "servers" line, then "<key> <server index>" lines.
#include <libmemcached/memcached.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
	const char *hosts[] = {"10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.4", "10.0.1.5"};
	in_port_t ports[] = {11212, 11213, 11214, 22122, 12345};
	if (argc > 1) {
		for (int i = 0; i < 5; i++) {
			ports[i] = (in_port_t)atoi(argv[1]);
		}
	}
	memcached_st *mc = memcached_create(NULL);
	printf("servers");
	for (int i = 0; i < 5; i++) {
		memcached_server_add(mc, hosts[i], ports[i]);
		printf(" %s:%u", hosts[i], ports[i]);
	}
	printf("\n");
	// Weighted ketama with equal weights: 160 points, 4 per MD5 digest, MD5 key hash.
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED, 1);
	char key[64];
	for (int i = 0; i < 2000; i++) {
		int n = snprintf(key, sizeof key, "key:%d", i);
		printf("%s %u\n", key, memcached_generate_hash(mc, key, n));
	}
	memcached_free(mc);
	return 0;
}
