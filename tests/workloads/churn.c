/* Process churn for memory tests: keeps `idle` children paused, then forks `total` short-lived children in waves
 * of `wave`; each maps and touches 64 KiB (so /proc and eBPF both see it), lives `life_ms`, and exits.
 * Usage: churn IDLE TOTAL WAVE LIFE_MS   (prints "idle ready" after the idle set, "churn done" at the end;
 * starts the churn when a line arrives on stdin; the idle set lives until stdin closes) */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {}
}

int main(int argc, char **argv) {
    if (argc != 5) return 2;
    int idle = atoi(argv[1]), total = atoi(argv[2]), wave = atoi(argv[3]);
    long life = atol(argv[4]);
    pid_t *idle_pids = calloc(idle, sizeof(pid_t));
    for (int i = 0; i < idle; i++) {
        pid_t p = fork();
        if (p == 0) { for (;;) pause(); }
        if (p < 0) { perror("fork"); return 1; }
        idle_pids[i] = p;
    }
    printf("idle ready\n");
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) goto out;
    for (int done = 0; done < total;) {
        int n = total - done < wave ? total - done : wave;
        for (int i = 0; i < n; i++) {
            pid_t p = fork();
            if (p == 0) {
                char *m = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                if (m != MAP_FAILED) memset(m, 1, 65536);
                sleep_ms(life);
                _exit(0);
            }
            if (p < 0) { perror("fork"); return 1; }
        }
        for (int i = 0; i < n; i++) wait(NULL);
        done += n;
    }
    printf("churn done\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {}
out:
    for (int i = 0; i < idle; i++) kill(idle_pids[i], SIGKILL);
    while (wait(NULL) > 0) {}
    return 0;
}
