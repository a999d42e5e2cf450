/* memwatchd kernel side: per-process allocation counters aggregated in a hash map, plus rare events
 * (process exit with final counters, OOM kill) through a ring buffer.
 *
 * Compiled by bcc from collectors/bpf.py with:
 *   -DMAX_PIDS=N          entries in the stats map
 *   -DRINGBUF_PAGES=N     ring buffer size in pages (power of two)
 *   -DMW_HAVE_GROUP_DEAD  when sched:sched_process_exit has the group_dead field
 *   -DMW_STATS_SIZE / -DMW_EVENT_SIZE  ctypes sizes of the Python mirrors (checked below)
 *   -DMW_EMPTY_SYS_EXIT   scripts/bench_probes.py only: the sys_exit probe returns at once (the hook's floor)
 *
 * Hook choice (measured, see PLATFORM.md): one raw tracepoint on sys_exit. Attaching any syscall tracepoint
 * puts every task on the syscall slow path (the ~0.92 floor); a raw tracepoint adds almost nothing on top,
 * while sys_enter_* tracepoints build a record per call (~0.83). sys_exit also gives the return value, so
 * failed calls are not counted and brk's new break is known.
 */
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>
#include "memwatch.h"

#ifndef MAX_PIDS
#define MAX_PIDS 65536
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 64
#endif

#ifdef MW_STATS_SIZE
_Static_assert(sizeof(struct mw_stats) == MW_STATS_SIZE, "struct mw_stats differs from its Python mirror");
#endif
#ifdef MW_EVENT_SIZE
_Static_assert(sizeof(struct mw_event) == MW_EVENT_SIZE, "struct mw_event differs from its Python mirror");
#endif

/* Native syscall numbers and where the number and the first argument live in pt_regs. bpf_probe_read_kernel
 * is the dominant cost of this probe (~60 ns a call here), so on x86_64 one read fetches both: si, di and
 * orig_ax are adjacent in the ptrace ABI layout. 32-bit compat tasks use other numbers and are not counted. */
#if defined(__x86_64__)
#define MW_NR_MMAP 9
#define MW_NR_MUNMAP 11
#define MW_NR_BRK 12
struct mw_regs_window {
	u64 arg1; /* si: length for mmap and munmap */
	u64 arg0; /* di */
	u64 nr;   /* orig_ax */
};
_Static_assert(offsetof(struct pt_regs, orig_ax) == offsetof(struct pt_regs, si) + 16, "pt_regs layout");
static __always_inline void read_regs(struct pt_regs *regs, struct mw_regs_window *w)
{
	bpf_probe_read_kernel(w, sizeof(*w), &regs->si);
}
#elif defined(__aarch64__)
#define MW_NR_MMAP 222
#define MW_NR_MUNMAP 215
#define MW_NR_BRK 214
struct mw_regs_window {
	u64 arg1;
	u64 nr;
};
static __always_inline void read_regs(struct pt_regs *regs, struct mw_regs_window *w)
{
	bpf_probe_read_kernel(&w->nr, sizeof(w->nr), &regs->syscallno);
	bpf_probe_read_kernel(&w->arg1, sizeof(w->arg1), &regs->regs[1]);
}
#else
#error "memwatchd: unsupported architecture (x86_64 and arm64 only)"
#endif

/* last_update_ns is refreshed on creation, on every brk and on every 64th mmap and munmap of a process:
 * bpf_ktime_get_ns costs about as much as the rest of the update on this VM (measured ~4 points of the
 * worst-case loop), and the timestamp only has to tell idle entries from busy ones. */
#define MW_STAMP_EVERY 64

#define MW_EEXIST 17

BPF_HASH(stats, u32, struct mw_stats, MAX_PIDS);
BPF_PERCPU_ARRAY(counters, u64, MW_CTR_COUNT);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);

static __always_inline void count(u32 idx)
{
	u64 *c = counters.lookup(&idx);
	if (c)
		(*c)++; /* per-CPU slot: no atomic needed */
}

/* The tgid's entry, created on first use. NULL when the map is full (counted). */
static __always_inline struct mw_stats *stats_of(u32 tgid)
{
	struct mw_stats *s = stats.lookup(&tgid);
	if (s)
		return s;
	struct mw_stats zero = {.last_update_ns = bpf_ktime_get_ns()};
	int err = stats.insert(&tgid, &zero); /* BPF_NOEXIST */
	if (err && err != -MW_EEXIST) {   /* EEXIST: another thread of the process won the race */
		count(MW_CTR_MAP_FULL);
		return 0;
	}
	return stats.lookup(&tgid);
}

RAW_TRACEPOINT_PROBE(sys_exit)
{
#ifdef MW_EMPTY_SYS_EXIT
	return 0;
#endif
	long ret = (long)ctx->args[1];
	/* Before reading registers: a successful mmap returns an address, munmap 0 and brk an address, so
	 * errors and small positive results (byte counts, fds) cannot be ours. */
	if (ret < 0 || (ret > 0 && ret < 65536))
		return 0;

	struct mw_regs_window w = {};
	read_regs((struct pt_regs *)ctx->args[0], &w);
	if (w.nr != MW_NR_MMAP && w.nr != MW_NR_MUNMAP && w.nr != MW_NR_BRK)
		return 0;
	if (w.nr == MW_NR_MUNMAP && ret != 0)
		return 0;

	struct mw_stats *s = stats_of(bpf_get_current_pid_tgid() >> 32);
	if (!s)
		return 0;

	if (w.nr == MW_NR_MMAP) {
		u64 n = __sync_fetch_and_add(&s->mmap_count, 1);
		__sync_fetch_and_add(&s->mmap_bytes, w.arg1);
		if (n % MW_STAMP_EVERY == 0)
			s->last_update_ns = bpf_ktime_get_ns();
	} else if (w.nr == MW_NR_MUNMAP) {
		u64 n = __sync_fetch_and_add(&s->munmap_count, 1);
		__sync_fetch_and_add(&s->munmap_bytes, w.arg1);
		if (n % MW_STAMP_EVERY == 0)
			s->last_update_ns = bpf_ktime_get_ns();
	} else {
		/* brk returns the new break (the old one on failure). Growth is the rise over the last break
		 * seen; the first brk seen (or the first after exec) only sets the baseline. A shrink lowers
		 * brk_bytes, floored at 0, so brk_bytes is the net heap growth since tracking began. Calls of one
		 * process are serialized by its mmap lock, so the read-modify-write of last_brk is safe enough. */
		u64 brk = (u64)ret;
		u64 last = s->last_brk;
		__sync_fetch_and_add(&s->brk_count, 1);
		if (last && brk > last) {
			__sync_fetch_and_add(&s->brk_bytes, brk - last);
		} else if (last && brk < last) {
			u64 cur = s->brk_bytes;
			u64 shrink = last - brk;
			__sync_fetch_and_add(&s->brk_bytes, -(shrink < cur ? shrink : cur));
		}
		s->last_brk = brk;
		s->last_update_ns = bpf_ktime_get_ns();
	}
	return 0;
}

/* exec replaces the heap: the next brk must set a new baseline instead of counting the jump. */
TRACEPOINT_PROBE(sched, sched_process_exec)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct mw_stats *s = stats.lookup(&tgid);
	if (s)
		s->last_brk = 0;
	return 0;
}

/* A whole process ended: hand its final counters to user space once and free the entry, so the map holds
 * live processes only. Exit code: not available in this tracepoint and reading task_struct would need the
 * running kernel's layout (the headers here are older), so it is reported as 0. */
TRACEPOINT_PROBE(sched, sched_process_exit)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32;
#ifdef MW_HAVE_GROUP_DEAD
	if (!args->group_dead)
		return 0;
#else
	if ((u32)id != tgid) /* a thread, not the leader */
		return 0;
#endif
	struct mw_stats *s = stats.lookup(&tgid);
	if (!s)
		return 0;
	struct mw_event *e = events.ringbuf_reserve(sizeof(struct mw_event));
	if (e) {
		__builtin_memset(e, 0, sizeof(*e));
		e->type = MW_EVENT_EXIT;
		e->pid = tgid;
		e->mono_ns = bpf_ktime_get_ns();
		__builtin_memcpy(&e->stats, s, sizeof(e->stats));
		bpf_get_current_comm(e->comm, sizeof(e->comm));
		events.ringbuf_submit(e, 0);
	} else {
		count(MW_CTR_LOST_EVENTS);
	}
	stats.delete(&tgid);
	return 0;
}

TRACEPOINT_PROBE(oom, mark_victim)
{
	struct mw_event *e = events.ringbuf_reserve(sizeof(struct mw_event));
	if (!e) {
		count(MW_CTR_LOST_EVENTS);
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->type = MW_EVENT_OOM;
	e->pid = args->pid;
	e->mono_ns = bpf_ktime_get_ns();
	e->total_vm_kb = args->total_vm;
	e->anon_rss_kb = args->anon_rss;
	e->file_rss_kb = args->file_rss;
	e->shmem_rss_kb = args->shmem_rss;
	e->uid = args->uid;
	e->oom_score_adj = args->oom_score_adj;
	/* __data_loc: low 16 bits are the string's offset from the record start */
	unsigned short off = args->data_loc_comm & 0xFFFF;
	bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), (char *)args + off);
	events.ringbuf_submit(e, 0);
	return 0;
}
