/* A program with one known leaking call site and a non-leaking alloc/free path, for leak triage tests
 * (tests/test_triage.py) and scripts/bench_triage.py.
 *
 *   leaky steps LEAKS CHURN
 *       Prints "ready" and waits for a line on stdin; then runs LEAKS rounds, each leaking one block from
 *       leak_here() (sizes 64..4159 bytes, fixed pseudo-random sequence) and making CHURN
 *       malloc/realloc/free round trips in churn_here(); prints "done LEAKED_BYTES" and waits for the next
 *       line (another round of the same), exiting on end of input. No stdio: its buffers are not
 *       allocations of the measured window.
 *   leaky bench SECONDS
 *       malloc(64..1088)+free pairs for SECONDS; prints pairs per wall second.
 *   leaky rate SECONDS
 *       The same pairs for SECONDS, printing every 0.5 s "END_MS PAIRS CPU_US": the interval's end (unix
 *       ms), the pairs made in it and the CPU time (user + system, us) it took (scripts/bench_triage.py).
 *   leaky mmap LEAKS
 *       Like steps, but leak_mmap_here() leaks LEAKS 256 KiB anonymous mmaps (for the syscall fallback).
 *   leaky run KB_PER_S SECONDS
 *       Prints "ready", waits for a line, then leaks KB_PER_S from leak_here() (with 4 churn round trips
 *       per leak) in 20 steps a second for SECONDS, prints "stopped" and waits for end of input.
 *
 * Build with and without frame pointers (-fno-omit-frame-pointer / -O2 -fomit-frame-pointer) and against
 * libjemalloc: the caller frame must name leak_here in every variant.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

struct block {
	struct block *next;
};

static struct block *kept;
static void *volatile sink; /* keeps the compiler from eliding malloc/free pairs */
static unsigned long long leaked;
static unsigned int seed = 12345;

static unsigned int next_rand(void)
{
	seed = seed * 1103515245u + 12345u;
	return (seed >> 8) & 0xfff;
}

static void say(const char *s)
{
	if (write(1, s, strlen(s)) < 0)
		_exit(3);
}

static void say_num(const char *prefix, unsigned long long v)
{
	char buf[64], digits[24];
	int n = 0;
	do {
		digits[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	size_t len = strlen(prefix);
	memcpy(buf, prefix, len);
	while (n)
		buf[len++] = digits[--n];
	buf[len++] = '\n';
	if (write(1, buf, len) < 0)
		_exit(3);
}

static int wait_line(void)
{
	char c;
	for (;;) {
		ssize_t r = read(0, &c, 1);
		if (r <= 0)
			return 0;
		if (c == '\n')
			return 1;
	}
}

__attribute__((noinline)) void leak_here(size_t size)
{
	struct block *b = malloc(size);
	if (!b)
		_exit(4);
	memset(b, 1, size);
	b->next = kept;
	kept = b;
	leaked += size;
}

__attribute__((noinline)) void leak_mmap_here(size_t size)
{
	char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		_exit(4);
	memset(p, 1, size);
	leaked += size;
}

__attribute__((noinline)) void churn_here(size_t size)
{
	char *p = malloc(size);
	if (!p)
		_exit(4);
	p[0] = 1;
	p = realloc(p, size * 2);
	if (!p)
		_exit(4);
	p[size] = 2;
	sink = p;
	free(sink);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static unsigned long long cpu_us(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (unsigned long long)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000ULL + ru.ru_utime.tv_usec +
	       ru.ru_stime.tv_usec;
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "bench") == 0) {
		double end = now_s() + atof(argv[2]), t0 = now_s();
		unsigned long long pairs = 0;
		while (now_s() < end) {
			for (int i = 0; i < 1000; i++) {
				char *p = malloc(64 + (next_rand() & 0x3ff));
				if (!p)
					_exit(4);
				p[0] = 1;
				sink = p;
				free(sink);
			}
			pairs += 1000;
		}
		say_num("", (unsigned long long)(pairs / (now_s() - t0)));
		return 0;
	}
	if (argc == 3 && strcmp(argv[1], "rate") == 0) {
		double end = now_s() + atof(argv[2]), next = now_s() + 0.5;
		unsigned long long pairs = 0, cpu0 = cpu_us();
		while (now_s() < end) {
			for (int i = 0; i < 1000; i++) {
				char *p = malloc(64 + (next_rand() & 0x3ff));
				if (!p)
					_exit(4);
				p[0] = 1;
				sink = p;
				free(sink);
			}
			pairs += 1000;
			if (now_s() >= next) {
				unsigned long long cpu = cpu_us();
				struct timespec ts;
				clock_gettime(CLOCK_REALTIME, &ts);
				say_num("", (unsigned long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
				say_num("", pairs);
				say_num("", cpu - cpu0);
				pairs = 0;
				cpu0 = cpu;
				next += 0.5;
			}
		}
		return 0;
	}
	if (argc == 3 && strcmp(argv[1], "mmap") == 0) {
		long leaks = atol(argv[2]);
		say("ready\n");
		while (wait_line()) {
			leaked = 0;
			for (long i = 0; i < leaks; i++)
				leak_mmap_here(256 * 1024);
			say_num("done ", leaked);
		}
		return 0;
	}
	if (argc == 4 && strcmp(argv[1], "run") == 0) {
		double rate = atof(argv[2]) * 1024, end;
		say("ready\n");
		if (!wait_line())
			return 0;
		end = now_s() + atof(argv[3]);
		while (now_s() < end) {
			double step_end = now_s() + 0.05;
			unsigned long long target = leaked + (unsigned long long)(rate * 0.05);
			while (leaked < target) {
				leak_here(64 + next_rand());
				for (int j = 0; j < 4; j++)
					churn_here(64 + next_rand());
			}
			while (now_s() < step_end)
				usleep(5000);
		}
		say("stopped\n");
		while (wait_line())
			;
		return 0;
	}
	if (argc != 4 || strcmp(argv[1], "steps") != 0) {
		say("usage: leaky steps LEAKS CHURN | leaky run KB_PER_S SECONDS | leaky bench SECONDS"
		    " | leaky mmap LEAKS\n");
		return 2;
	}
	long leaks = atol(argv[2]), churn = atol(argv[3]);
	say("ready\n");
	while (wait_line()) {
		leaked = 0;
		for (long i = 0; i < leaks; i++) {
			leak_here(64 + next_rand());
			for (long j = 0; j < churn; j++)
				churn_here(64 + next_rand());
		}
		say_num("done ", leaked);
	}
	return 0;
}
