/* Allocation workload driven over pipes, for tests/test_bpf.py and scripts/bench_probes.py.
 *
 *   alloc phases CHUNKS CHUNK_BYTES SBRKS SBRK_BYTES
 *       Each phase ends with a marker line on stdout ("start", "mapped", "unmapped", "brk"), then the
 *       program waits for a line on stdin. Between markers it makes only the syscalls of that phase (no
 *       stdio, no malloc), so BPF counters taken at two markers differ by exactly that phase's calls.
 *       After the last line it calls _exit(0).
 *   alloc hog MAX_MB
 *       Maps and touches 1 MiB chunks up to MAX_MB (to be OOM-killed inside a small memory cgroup).
 *   alloc churn N
 *       Forks N short-lived children one after another; each maps and unmaps one page, then _exit(0).
 *   alloc loop SECONDS
 *       mmap(4 KiB)+munmap pairs for SECONDS (worst case for the probes); prints pairs per wall second
 *       and pairs per CPU second of this process.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_CHUNKS 4096

static void mark(const char *s)
{
	if (write(1, s, strlen(s)) < 0)
		_exit(3);
}

static void wait_line(void)
{
	char c;
	while (read(0, &c, 1) == 1 && c != '\n')
		;
}

static void touch(char *p, size_t len)
{
	for (size_t off = 0; off < len; off += 4096)
		p[off] = 1;
}

static int phases(long chunks, long chunk, long sbrks, long sbrk_bytes)
{
	static char *maps[MAX_CHUNKS];
	if (chunks > MAX_CHUNKS)
		return 2;
	mark("start\n");
	wait_line();
	for (long i = 0; i < chunks; i++) {
		maps[i] = mmap(NULL, chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (maps[i] == MAP_FAILED)
			return 1;
		touch(maps[i], chunk);
	}
	mark("mapped\n");
	wait_line();
	for (long i = 0; i < chunks; i++)
		munmap(maps[i], chunk);
	mark("unmapped\n");
	wait_line();
	for (long i = 0; i < sbrks; i++) {
		char *p = sbrk(sbrk_bytes);
		if (p == (void *)-1)
			return 1;
		touch(p, sbrk_bytes);
	}
	mark("brk\n");
	wait_line();
	_exit(0);
}

static int hog(long max_mb)
{
	for (long i = 0; i < max_mb; i++) {
		char *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			return 1;
		touch(p, 1 << 20);
	}
	return 0;
}

static int churn(long n)
{
	for (long i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0)
			return 1;
		if (pid == 0) {
			void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (p != MAP_FAILED)
				munmap(p, 4096);
			_exit(0);
		}
		waitpid(pid, NULL, 0);
	}
	return 0;
}

static double clock_s(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double now(void)
{
	return clock_s(CLOCK_MONOTONIC);
}

static int loop(double seconds)
{
	long pairs = 0;
	double cpu0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
	double start = now(), end = start + seconds, t = start;
	while (t < end) {
		for (int i = 0; i < 1000; i++) {
			void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (p == MAP_FAILED)
				return 1;
			munmap(p, 4096);
		}
		pairs += 1000;
		t = now();
	}
	/* per wall second, and per CPU second (robust when other tasks share the CPU) */
	printf("%.0f %.0f\n", pairs / (t - start), pairs / (clock_s(CLOCK_PROCESS_CPUTIME_ID) - cpu0));
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 6 && !strcmp(argv[1], "phases"))
		return phases(atol(argv[2]), atol(argv[3]), atol(argv[4]), atol(argv[5]));
	if (argc == 3 && !strcmp(argv[1], "hog"))
		return hog(atol(argv[2]));
	if (argc == 3 && !strcmp(argv[1], "churn"))
		return churn(atol(argv[2]));
	if (argc == 3 && !strcmp(argv[1], "loop"))
		return loop(atof(argv[2]));
	fprintf(stderr, "usage: alloc phases CHUNKS CHUNK_BYTES SBRKS SBRK_BYTES | hog MAX_MB | churn N | loop SECONDS\n");
	return 2;
}
