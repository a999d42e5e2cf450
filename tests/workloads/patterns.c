/* Memory patterns for the detection benchmark (scripts/bench_detect) and the rule tests.
 *
 * Every mode prints "grow <unix-seconds>\n" when its memory pattern starts, runs it for SECONDS, prints
 * "hold\n" and then sleeps (memory kept) until killed. The first argument after the mode is the process
 * name (set with PR_SET_NAME), so the daemon's rules and the benchmark can tell the programs apart.
 *
 *   patterns steady  NAME SECONDS CHUNK_KB PERIOD_MS    malloc + touch CHUNK_KB every PERIOD_MS, keep all
 *   patterns stepped NAME SECONDS STEP_KB PERIOD_S      malloc + touch STEP_KB every PERIOD_S (a stair)
 *   patterns realloc NAME SECONDS CHUNK_KB PERIOD_MS    one buffer grown by realloc (glibc: mremap)
 *   patterns pool    NAME SECONDS WORKERS LEAK_KB TASK_PERIOD_S
 *                    a parent hands one task to its workers in turn every TASK_PERIOD_S / WORKERS;
 *                    a task uses 256 KiB of scratch (freed) and leaks LEAK_KB (a rare allocator)
 *   patterns heap    NAME SECONDS LOW_MB HIGH_MB STEP_MB STEP_MS
 *                    a JVM-like heap: 1 GiB reserved PROT_NONE, committed in place with
 *                    mmap(MAP_FIXED, PROT_READ|PROT_WRITE) from LOW_MB up to HIGH_MB in STEP_MB steps,
 *                    then uncommitted back to LOW_MB with mmap(MAP_FIXED, PROT_NONE) at once (a full GC
 *                    shrinking the heap), over and over; the address space never changes size
 *   patterns jump    NAME SECONDS MB AFTER_S            idle, then MB allocated and touched at once
 *   patterns churn   NAME SECONDS WORKSET_MB OPS_PER_S   mmap/munmap of 4 KiB..4 MiB blocks at random,
 *                    keeping about WORKSET_MB mapped (an allocator that returns memory eagerly)
 *   patterns forks   NAME SECONDS PER_S CHILD_MB        forks PER_S children a second; each touches
 *                    CHILD_MB and exits after 200 ms
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double wall(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_s(double s)
{
	if (s <= 0)
		return;
	struct timespec ts = {(time_t)s, (long)((s - (time_t)s) * 1e9)};
	while (nanosleep(&ts, &ts) != 0)
		;
}

static void touch(char *p, size_t len)
{
	for (size_t off = 0; off < len; off += 4096)
		p[off] = 1;
}

static void say_grow(void)
{
	printf("grow %.3f\n", wall());
	fflush(stdout);
}

static int hold(void)
{
	printf("hold\n");
	fflush(stdout);
	for (;;)
		pause();
	return 0;
}

static int steady(double seconds, long chunk_kb, long period_ms)
{
	double end = mono() + seconds;
	say_grow();
	while (mono() < end) {
		char *p = malloc(chunk_kb * 1024);
		if (!p)
			return 1;
		touch(p, chunk_kb * 1024);
		sleep_s(period_ms / 1000.0);
	}
	return hold();
}

static int stepped(double seconds, long step_kb, double period_s)
{
	double start = mono(), end = start + seconds;
	say_grow();
	for (long i = 0; mono() < end; i++) {
		char *p = malloc(step_kb * 1024);
		if (!p)
			return 1;
		touch(p, step_kb * 1024);
		sleep_s(start + (i + 1) * period_s - mono());
	}
	return hold();
}

static int grow_realloc(double seconds, long chunk_kb, long period_ms)
{
	double end = mono() + seconds;
	size_t size = 1 << 20;
	char *buf = malloc(size);
	if (!buf)
		return 1;
	touch(buf, size);
	say_grow();
	while (mono() < end) {
		size_t old = size;
		size += chunk_kb * 1024;
		buf = realloc(buf, size);
		if (!buf)
			return 1;
		touch(buf + old, size - old);
		sleep_s(period_ms / 1000.0);
	}
	return hold();
}

static void worker(int fd, long leak_kb)
{
	char c;
	while (read(fd, &c, 1) == 1) {
		char *scratch = malloc(256 * 1024);
		if (scratch) {
			touch(scratch, 256 * 1024);
			free(scratch);
		}
		char *leak = malloc(leak_kb * 1024);
		if (leak)
			touch(leak, leak_kb * 1024);
	}
	_exit(0);
}

static int pool(double seconds, long workers, long leak_kb, double task_period_s)
{
	int fds[64];
	if (workers < 1 || workers > 64)
		return 2;
	for (long i = 0; i < workers; i++) {
		int p[2];
		if (pipe(p) != 0)
			return 1;
		pid_t pid = fork();
		if (pid < 0)
			return 1;
		if (pid == 0) {
			close(p[1]);
			worker(p[0], leak_kb);
		}
		close(p[0]);
		fds[i] = p[1];
		printf("worker %d\n", (int)pid);
	}
	double start = mono(), end = start + seconds, gap = task_period_s / workers;
	say_grow();
	for (long i = 0; mono() < end; i++) {
		if (write(fds[i % workers], "t", 1) != 1)
			return 1;
		sleep_s(start + (i + 1) * gap - mono());
	}
	return hold();
}

static int heap(double seconds, long low_mb, long high_mb, long step_mb, long step_ms)
{
	const size_t mb = 1 << 20, reserve = 1024 * mb;
	char *base = mmap(NULL, reserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (base == MAP_FAILED)
		return 1;
	size_t committed = 0;
	double end = mono() + seconds;
	say_grow();
	while (mono() < end) {
		size_t want = committed < (size_t)low_mb * mb ? (size_t)low_mb * mb : committed + step_mb * mb;
		if (want > (size_t)high_mb * mb) {
			/* full GC: give everything above LOW back in place, the reservation stays */
			size_t low = (size_t)low_mb * mb;
			if (mmap(base + low, committed - low, PROT_NONE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) == MAP_FAILED)
				return 1;
			committed = low;
		} else {
			if (mmap(base + committed, want - committed, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
				return 1;
			touch(base + committed, want - committed);
			committed = want;
		}
		sleep_s(step_ms / 1000.0);
	}
	return hold();
}

static int jump(double seconds, long mb, double after_s)
{
	say_grow();
	sleep_s(after_s);
	char *p = malloc(mb << 20);
	if (!p)
		return 1;
	touch(p, mb << 20);
	printf("jumped %.3f\n", wall());
	fflush(stdout);
	sleep_s(seconds - after_s);
	return hold();
}

static int churn(double seconds, long workset_mb, long ops_per_s)
{
	enum { SLOTS = 256 };
	static char *slot[SLOTS];
	static size_t len[SLOTS];
	size_t mapped = 0, want = (size_t)workset_mb << 20;
	unsigned seed = 12345;
	double end = mono() + seconds;
	say_grow();
	while (mono() < end) {
		int i = rand_r(&seed) % SLOTS;
		if (slot[i]) {
			munmap(slot[i], len[i]);
			mapped -= len[i];
			slot[i] = NULL;
		}
		if (mapped < want) {
			size_t n = (size_t)(4096 << (rand_r(&seed) % 11)); /* 4 KiB .. 4 MiB */
			char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (p == MAP_FAILED)
				return 1;
			touch(p, n);
			slot[i] = p;
			len[i] = n;
			mapped += n;
		}
		sleep_s(1.0 / ops_per_s);
	}
	return hold();
}

static int forks(double seconds, long per_s, long child_mb)
{
	double end = mono() + seconds;
	signal(SIGCHLD, SIG_IGN); /* no zombies */
	say_grow();
	while (mono() < end) {
		pid_t pid = fork();
		if (pid < 0)
			return 1;
		if (pid == 0) {
			char *p = malloc(child_mb << 20);
			if (p)
				touch(p, child_mb << 20);
			sleep_s(0.2);
			_exit(0);
		}
		sleep_s(1.0 / per_s);
	}
	return hold();
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: patterns MODE NAME SECONDS ARGS... (see the source)\n");
		return 2;
	}
	const char *mode = argv[1];
	prctl(PR_SET_NAME, argv[2], 0, 0, 0);
	double s = atof(argv[3]);
	long a = argc > 4 ? atol(argv[4]) : 0, b = argc > 5 ? atol(argv[5]) : 0;
	long c = argc > 6 ? atol(argv[6]) : 0, d = argc > 7 ? atol(argv[7]) : 0;
	if (!strcmp(mode, "steady") && argc == 6)
		return steady(s, a, b);
	if (!strcmp(mode, "stepped") && argc == 6)
		return stepped(s, a, atof(argv[5]));
	if (!strcmp(mode, "realloc") && argc == 6)
		return grow_realloc(s, a, b);
	if (!strcmp(mode, "pool") && argc == 7)
		return pool(s, a, b, atof(argv[6]));
	if (!strcmp(mode, "heap") && argc == 8)
		return heap(s, a, b, c, d);
	if (!strcmp(mode, "jump") && argc == 6)
		return jump(s, a, atof(argv[5]));
	if (!strcmp(mode, "churn") && argc == 6)
		return churn(s, a, b);
	if (!strcmp(mode, "forks") && argc == 6)
		return forks(s, a, b);
	fprintf(stderr, "patterns: bad mode or arguments\n");
	return 2;
}
