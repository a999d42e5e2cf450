/* Address-space workloads for tests/test_bpf_mapped.py and tests/test_bpf_exits.py.
 *
 *   addrspace realloc MAX_MB
 *       Grows one buffer with realloc from 1 MiB to MAX_MB in 1 MiB steps, touching it (glibc moves a chunk
 *       that large to its own mapping and grows it with mremap), then prints "grown" and waits for a line
 *       on stdin; shrinks it back to 1 MiB with realloc, prints "shrunk", waits, exits.
 *   addrspace jvm RESERVE_MB COMMIT_MB CYCLES
 *       Like a JVM heap: reserves RESERVE_MB with one PROT_NONE mapping, prints "reserved" and waits; then
 *       CYCLES times commits COMMIT_MB inside it with mmap(MAP_FIXED, PROT_READ|PROT_WRITE), touches it, and
 *       uncommits it with mmap(MAP_FIXED, PROT_NONE, MAP_NORESERVE); prints "cycled" and waits, exits.
 *   addrspace burst N
 *       Forks N children; each maps one page, then blocks reading a pipe. The parent prints "ready" and the
 *       children's pids (one per line, then "end"), waits for a line on stdin, then closes the pipe: every
 *       child sees EOF at once and exits with status (index % 200). The parent reaps them all and prints
 *       "done SECONDS" (from the pipe's close to the last reap).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MIB (1L << 20)

static void wait_line(void)
{
	char c;
	while (read(0, &c, 1) == 1 && c != '\n')
		;
}

static void say(const char *s)
{
	printf("%s\n", s);
	fflush(stdout);
}

static int grow(long max_mb)
{
	char *p = NULL;
	for (long mb = 1; mb <= max_mb; mb++) {
		char *q = realloc(p, mb * MIB);
		if (!q)
			return 1;
		p = q;
		for (long off = (mb - 1) * MIB; off < mb * MIB; off += 4096)
			p[off] = 1;
	}
	say("grown");
	wait_line();
	p = realloc(p, MIB);
	say("shrunk");
	wait_line();
	free(p);
	return 0;
}

static int jvm(long reserve_mb, long commit_mb, long cycles)
{
	char *base = mmap(NULL, reserve_mb * MIB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (base == MAP_FAILED)
		return 1;
	say("reserved");
	wait_line();
	for (long i = 0; i < cycles; i++) {
		char *heap = base + (i % 2) * commit_mb * MIB; /* alternate between two regions, as GCs do */
		if (mmap(heap, commit_mb * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) ==
		    MAP_FAILED)
			return 1;
		for (long off = 0; off < commit_mb * MIB; off += 4096)
			heap[off] = 1;
		if (mmap(heap, commit_mb * MIB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1,
			 0) == MAP_FAILED)
			return 1;
	}
	say("cycled");
	wait_line();
	return 0;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int burst(long n)
{
	int fds[2];
	if (pipe(fds))
		return 1;
	pid_t *pids = calloc(n, sizeof(pid_t));
	for (long i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0)
			return 1;
		if (pid == 0) {
			close(fds[1]);
			void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			char c;
			(void)p;
			while (read(fds[0], &c, 1) > 0)
				;
			_exit((int)(i % 200));
		}
		pids[i] = pid;
	}
	close(fds[0]);
	printf("ready\n");
	for (long i = 0; i < n; i++)
		printf("%d\n", pids[i]);
	say("end");
	wait_line();
	double t0 = now();
	close(fds[1]);
	for (long i = 0; i < n; i++)
		waitpid(pids[i], NULL, 0);
	printf("done %.3f\n", now() - t0);
	fflush(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "realloc"))
		return grow(atol(argv[2]));
	if (argc == 5 && !strcmp(argv[1], "jvm"))
		return jvm(atol(argv[2]), atol(argv[3]), atol(argv[4]));
	if (argc == 3 && !strcmp(argv[1], "burst"))
		return burst(atol(argv[2]));
	fprintf(stderr, "usage: addrspace realloc MAX_MB | jvm RESERVE_MB COMMIT_MB CYCLES | burst N\n");
	return 2;
}
