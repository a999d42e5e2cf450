/* memwatchd kernel side: per-process allocation counters aggregated in a hash map, plus rare events
 * (process exit with final counters, OOM kill) through a ring buffer.
 *
 * Compiled by bcc from collectors/bpf.py with:
 *   -DMAX_PIDS=N          entries in the stats map
 *   -DRINGBUF_PAGES=N     ring buffer size in pages (power of two)
 *   -DMW_HAVE_GROUP_DEAD  when sched:sched_process_exit has the group_dead field
 *   -DMW_STATS_SIZE / -DMW_EVENT_SIZE  ctypes sizes of the Python mirrors (checked below)
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

/* Native syscall numbers and pt_regs fields. 32-bit compat tasks use other numbers and are not counted. */
#if defined(__x86_64__)
#define MW_NR_MMAP 9
#define MW_NR_MUNMAP 11
#define MW_NR_BRK 12
#define MW_REG_NR(regs) (&(regs)->orig_ax)
#define MW_REG_ARG1(regs) (&(regs)->si)
#elif defined(__aarch64__)
#define MW_NR_MMAP 222
#define MW_NR_MUNMAP 215
#define MW_NR_BRK 214
#define MW_REG_NR(regs) (&(regs)->syscallno)
#define MW_REG_ARG1(regs) (&(regs)->regs[1])
#else
#error "memwatchd: unsupported architecture (x86_64 and arm64 only)"
#endif

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
	struct mw_stats zero = {};
	int err = stats.insert(&tgid, &zero); /* BPF_NOEXIST */
	if (err && err != -MW_EEXIST) {   /* EEXIST: another thread of the process won the race */
		count(MW_CTR_MAP_FULL);
		return 0;
	}
	return stats.lookup(&tgid);
}

RAW_TRACEPOINT_PROBE(sys_exit)
{
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	long ret = (long)ctx->args[1];
	long nr = -1;

	bpf_probe_read_kernel(&nr, sizeof(nr), MW_REG_NR(regs));
	if (nr != MW_NR_MMAP && nr != MW_NR_MUNMAP && nr != MW_NR_BRK)
		return 0;

	struct mw_stats *s = stats_of(bpf_get_current_pid_tgid() >> 32);
	if (!s)
		return 0;

	if (nr == MW_NR_BRK) {
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
	} else {
		u64 len = 0;
		bpf_probe_read_kernel(&len, sizeof(len), MW_REG_ARG1(regs));
		if (nr == MW_NR_MMAP) {
			if (ret < 0 && ret >= -4095) /* failed: -errno */
				return 0;
			__sync_fetch_and_add(&s->mmap_count, 1);
			__sync_fetch_and_add(&s->mmap_bytes, len);
		} else {
			if (ret != 0)
				return 0;
			__sync_fetch_and_add(&s->munmap_count, 1);
			__sync_fetch_and_add(&s->munmap_bytes, len);
		}
	}
	s->last_update_ns = bpf_ktime_get_ns();
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
