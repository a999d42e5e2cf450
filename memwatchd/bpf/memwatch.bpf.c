/* memwatchd kernel side: per-process allocation counters aggregated in a hash map, final counters of ended
 * processes in a second hash map drained at each poll, and rare events (OOM kill) through a ring buffer.
 *
 * Compiled by bcc from collectors/bpf.py with:
 *   -DMAX_PIDS=N          entries in the stats map
 *   -DMAX_EXITS=N         entries in the exits map (exit records waiting for the next poll)
 *   -DRINGBUF_PAGES=N     ring buffer size in pages (power of two)
 *   -DMW_PAGE_SIZE=N      the page size (mapped_bytes rounds lengths up to pages, as the kernel does)
 *   -DMW_HAVE_GROUP_DEAD  when sched:sched_process_exit has the group_dead field
 *   -DMW_STATS_SIZE / -DMW_EXIT_SIZE / -DMW_EVENT_SIZE  ctypes sizes of the Python mirrors (checked below)
 *   -DMW_TASK_SIZE        ctypes size of struct mw_task's mirror (collectors/taskscan.py)
 *   -DMW_OFF_*            byte offsets of task_struct, signal_struct and mm_struct fields, taken from the
 *                         running kernel's BTF (collectors/btf.py); without them (no BTF) start times, exit
 *                         statuses, OOM marks and peak RSS are reported as unknown
 *   -DMW_EMPTY_SYS_EXIT   scripts/bench_probes.py only: the sys_exit probe returns at once (the hook's floor)
 *
 * Hook choice (measured with scripts/bench_probes.py; figures in README.md, "Benchmarks", and bench/results.md):
 * one raw tracepoint on sys_exit. Attaching any syscall tracepoint
 * puts every task on the syscall slow path (the ~0.92 floor); a raw tracepoint adds almost nothing on top,
 * while sys_enter_* tracepoints build a record per call (~0.83). sys_exit also gives the return value, so
 * failed calls are not counted and brk's new break and mremap's success are known.
 *
 * mapped_bytes (mapped_net - mapped_low) follows the process's own address-space changes since tracking
 * began or its last exec: mmap adds its page-rounded length, munmap subtracts it, mremap adds its growth or
 * subtracts its shrink, brk adds or subtracts the move of the break. A MAP_FIXED mmap adds nothing: it is
 * taken to replace address space the process already had (a JVM or Go heap committing and uncommitting
 * inside its own PROT_NONE reservation), which is what MAP_FIXED is used for; the reservation itself was
 * counted when it was made. Limits: a MAP_FIXED mmap into free address space is not counted (an
 * under-count; MAP_FIXED_NOREPLACE, which only succeeds on free space, is counted); a munmap of a range
 * that was not mapped subtracts anyway (munmap returns 0 for it); an mremap with MREMAP_FIXED over an
 * existing mapping does not subtract what it replaced. The running sum never goes below zero: it is kept
 * as a signed net and its lowest point, and their difference is the floored sum (unmapping ranges mapped
 * before tracking, or inherited, leaves it at zero instead of negative).
 */
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>
#include "memwatch.h"

#ifndef MAX_PIDS
#define MAX_PIDS 65536
#endif
#ifndef MAX_EXITS
#define MAX_EXITS 32768
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 64
#endif
#ifndef MW_PAGE_SIZE
#define MW_PAGE_SIZE 4096
#endif

#ifdef MW_STATS_SIZE
_Static_assert(sizeof(struct mw_stats) == MW_STATS_SIZE, "struct mw_stats differs from its Python mirror");
#endif
#ifdef MW_EXIT_SIZE
_Static_assert(sizeof(struct mw_exit) == MW_EXIT_SIZE, "struct mw_exit differs from its Python mirror");
#endif
#ifdef MW_EVENT_SIZE
_Static_assert(sizeof(struct mw_event) == MW_EVENT_SIZE, "struct mw_event differs from its Python mirror");
#endif

#if defined(MW_OFF_TASK_START) && defined(MW_OFF_TASK_LEADER) && defined(MW_OFF_TASK_EXIT_CODE) && \
	defined(MW_OFF_TASK_MM) && defined(MW_OFF_TASK_SIGNAL) && defined(MW_OFF_SIGNAL_OOM_MM) && \
	defined(MW_OFF_MM_HIWATER) && defined(MW_OFF_MM_RSS_FILE) && defined(MW_OFF_MM_RSS_ANON) && \
	defined(MW_OFF_MM_RSS_SHMEM)
#define MW_HAVE_TASK 1
#endif

/* Exits of processes without a stats entry (they never mapped while tracked) are reported only when the
 * process lived this long, was an OOM victim, or was reported by the task iterator: long enough for a /proc scan to have seen it, so its exit
 * status is worth keeping; fork storms of short children cost no records. */
#define MW_EXIT_MIN_AGE_NS 1000000000ULL

#define MW_MAP_FIXED 0x10
#define MW_MREMAP_DONTUNMAP 4
#define MW_PAGE_UP(x) (((x) + MW_PAGE_SIZE - 1) & ~((u64)MW_PAGE_SIZE - 1))

/* Native syscall numbers and where the number and the arguments live in pt_regs. bpf_probe_read_kernel
 * is the dominant cost of this probe (~60 ns a call here), so on x86_64 one read fetches everything: r10
 * (arg 3) to orig_ax are adjacent in the ptrace ABI layout. 32-bit compat tasks use other numbers and are
 * not counted. */
#if defined(__x86_64__)
#define MW_NR_MMAP 9
#define MW_NR_MUNMAP 11
#define MW_NR_BRK 12
#define MW_NR_MREMAP 25
struct mw_regs_window {
	u64 arg3; /* r10: mmap and mremap flags */
	u64 r9, r8, ax, cx;
	u64 arg2; /* dx: mremap new_len */
	u64 arg1; /* si: length for mmap and munmap, mremap old_len */
	u64 arg0; /* di */
	u64 nr;   /* orig_ax */
};
_Static_assert(offsetof(struct pt_regs, orig_ax) == offsetof(struct pt_regs, r10) + 64, "pt_regs layout");
static __always_inline void read_regs(struct pt_regs *regs, struct mw_regs_window *w)
{
	bpf_probe_read_kernel(w, sizeof(*w), &regs->r10);
}
#elif defined(__aarch64__)
#define MW_NR_MMAP 222
#define MW_NR_MUNMAP 215
#define MW_NR_BRK 214
#define MW_NR_MREMAP 216
struct mw_regs_window {
	u64 arg1;
	u64 arg2;
	u64 arg3;
	u64 nr;
};
static __always_inline void read_regs(struct pt_regs *regs, struct mw_regs_window *w)
{
	bpf_probe_read_kernel(&w->nr, sizeof(w->nr), &regs->syscallno);
	bpf_probe_read_kernel(&w->arg1, 3 * sizeof(u64), &regs->regs[1]);
}
#else
#error "memwatchd: unsupported architecture (x86_64 and arm64 only)"
#endif

/* last_update_ns is refreshed on creation, on every brk and mremap and on every 64th mmap and munmap of a
 * process: bpf_ktime_get_ns costs about as much as the rest of the update on this VM (measured ~4 points
 * of the worst-case loop), and the timestamp only has to tell idle entries from busy ones. */
#define MW_STAMP_EVERY 64

#define MW_EEXIST 17

BPF_HASH(stats, u32, struct mw_stats, MAX_PIDS);
/* Preallocated (~7 MB for 32768 records): an allocating map (BPF_F_NO_PREALLOC) draws from a per-CPU cache
 * refilled asynchronously, which a fast run of exits on one CPU can empty (a record lost). */
BPF_HASH(exits, struct mw_exit_key, struct mw_exit, MAX_EXITS);
BPF_PERCPU_ARRAY(counters, u64, MW_CTR_COUNT);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
/* The task iterator's state (see the end of this file): the last record emitted per tgid, as a digest;
 * freed identities for the daemon; scan_ctl: enum mw_scan_ctl (slot 0 != 0 asks for a full pass). */
BPF_HASH(scan_last, u32, struct mw_task_seen, MAX_PIDS);
BPF_HASH(scan_gone, struct mw_exit_key, u64, MAX_EXITS);
BPF_ARRAY(scan_ctl, u32, 4); /* enum mw_scan_ctl */
#define MW_MAX_CPUS 64
BPF_ARRAY(pcpu_off, u64, MW_MAX_CPUS); /* each CPU's per-CPU area offset, see mw_calibrate() */

static __always_inline void count(u32 idx)
{
	u64 *c = counters.lookup(&idx);
	if (c)
		(*c)++; /* per-CPU slot: no atomic needed */
}

static __always_inline u64 read_u64(const void *base, u64 off)
{
	u64 v = 0;
	if (base)
		bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
	return v;
}

/* The calling process's start time as /proc computes field 22 of stat (before the division into clock
 * ticks): its thread-group leader's start_boottime. 0 when unknown. */
static __always_inline u64 process_start_ns(void)
{
#ifdef MW_HAVE_TASK
	void *task = (void *)bpf_get_current_task();
	void *leader = (void *)read_u64(task, MW_OFF_TASK_LEADER);
	return read_u64(leader, MW_OFF_TASK_START);
#else
	return 0;
#endif
}

/* The tgid's entry, created on first use. NULL when the map is full (counted). */
static __always_inline struct mw_stats *stats_of(u32 tgid)
{
	struct mw_stats *s = stats.lookup(&tgid);
	if (s)
		return s;
	struct mw_stats zero = {.last_update_ns = bpf_ktime_get_ns(), .start_ns = process_start_ns()};
	int err = stats.insert(&tgid, &zero); /* BPF_NOEXIST */
	if (err && err != -MW_EEXIST) {   /* EEXIST: another thread of the process won the race */
		count(MW_CTR_MAP_FULL);
		return 0;
	}
	return stats.lookup(&tgid);
}

/* Add d to the floored running sum of mapped bytes (see the header comment). Threads of one process may
 * race here: the sum is atomic, the low-water mark a plain store (a race can only leave it slightly high). */
static __always_inline void mapped_add(struct mw_stats *s, s64 d)
{
	s64 now = __sync_fetch_and_add(&s->mapped_net, d) + d;
	if (now < s->mapped_low)
		s->mapped_low = now;
}

RAW_TRACEPOINT_PROBE(sys_exit)
{
#ifdef MW_EMPTY_SYS_EXIT
	return 0;
#endif
	long ret = (long)ctx->args[1];
	/* Before reading registers: a successful mmap and mremap return an address, munmap 0 and brk an
	 * address, so errors and small positive results (byte counts, fds) cannot be ours. */
	if (ret < 0 || (ret > 0 && ret < 65536))
		return 0;

	struct mw_regs_window w = {};
	read_regs((struct pt_regs *)ctx->args[0], &w);
	if (w.nr != MW_NR_MMAP && w.nr != MW_NR_MUNMAP && w.nr != MW_NR_BRK && w.nr != MW_NR_MREMAP)
		return 0;
	if (w.nr == MW_NR_MUNMAP && ret != 0)
		return 0;
	if (w.nr == MW_NR_MREMAP && ret == 0)
		return 0;

	struct mw_stats *s = stats_of(bpf_get_current_pid_tgid() >> 32);
	if (!s)
		return 0;

	if (w.nr == MW_NR_MMAP) {
		u64 n = __sync_fetch_and_add(&s->mmap_count, 1);
		__sync_fetch_and_add(&s->mmap_bytes, w.arg1);
		if (!(w.arg3 & MW_MAP_FIXED))
			mapped_add(s, MW_PAGE_UP(w.arg1));
		if (n % MW_STAMP_EVERY == 0)
			s->last_update_ns = bpf_ktime_get_ns();
	} else if (w.nr == MW_NR_MUNMAP) {
		u64 n = __sync_fetch_and_add(&s->munmap_count, 1);
		__sync_fetch_and_add(&s->munmap_bytes, w.arg1);
		mapped_add(s, -(s64)MW_PAGE_UP(w.arg1));
		if (n % MW_STAMP_EVERY == 0)
			s->last_update_ns = bpf_ktime_get_ns();
	} else if (w.nr == MW_NR_MREMAP) {
		u64 old_len = w.arg1, new_len = w.arg2;
		__sync_fetch_and_add(&s->mremap_count, 1);
		if (new_len > old_len)
			__sync_fetch_and_add(&s->mremap_grow_bytes, new_len - old_len);
		else
			__sync_fetch_and_add(&s->mremap_shrink_bytes, old_len - new_len);
		if (w.arg3 & MW_MREMAP_DONTUNMAP) /* the old range stays mapped: all of the new one is added */
			mapped_add(s, MW_PAGE_UP(new_len));
		else
			mapped_add(s, (s64)MW_PAGE_UP(new_len) - (s64)MW_PAGE_UP(old_len));
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
		if (last && brk != last)
			mapped_add(s, (s64)MW_PAGE_UP(brk) - (s64)MW_PAGE_UP(last));
		s->last_brk = brk;
		s->last_update_ns = bpf_ktime_get_ns();
	}
	return 0;
}

/* exec replaces the address space: the next brk must set a new baseline instead of counting the jump, and
 * mapped_bytes starts again from zero (what the old image had mapped is gone). The timestamp moves too: the
 * collector reuses an entry's previous record while its call counters and timestamp stand still. */
TRACEPOINT_PROBE(sched, sched_process_exec)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct mw_stats *s = stats.lookup(&tgid);
	if (s) {
		s->last_brk = 0;
		s->mapped_net = 0;
		s->mapped_low = 0;
		s->last_update_ns = bpf_ktime_get_ns();
	}
	return 0;
}

/* A whole process ended: store its final counters, start time, exit status, OOM mark and peak RSS in the
 * exits map for the daemon's next poll, and free its stats entry, so that map holds live processes only.
 * In this kernel the tracepoint fires after task->exit_code is set and before exit_mm(), so the mm and its
 * RSS counters are still there. */
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
	struct mw_exit x = {};
	struct mw_exit_key key = {.tgid = tgid};
	x.mono_ns = bpf_ktime_get_ns();
#ifdef MW_HAVE_TASK
	void *task = (void *)bpf_get_current_task();
	void *mm = (void *)read_u64(task, MW_OFF_TASK_MM);
	if (!mm) { /* a kernel thread */
		if (s)
			stats.delete(&tgid);
		return 0;
	}
	key.start_ns = read_u64((void *)read_u64(task, MW_OFF_TASK_LEADER), MW_OFF_TASK_START);
	void *sig = (void *)read_u64(task, MW_OFF_TASK_SIGNAL);
	if (read_u64(sig, MW_OFF_SIGNAL_OOM_MM))
		x.flags |= MW_EXIT_OOM;
	/* a process the task iterator reported is worth its exit record, however young */
	if (!s && !(x.flags & MW_EXIT_OOM) && !scan_last.lookup(&tgid) &&
	    bpf_ktime_get_boot_ns() - key.start_ns < MW_EXIT_MIN_AGE_NS)
		return 0;
	if (key.start_ns)
		x.flags |= MW_EXIT_START_KNOWN;
	bpf_probe_read_kernel(&x.status, sizeof(x.status), (char *)task + MW_OFF_TASK_EXIT_CODE);
	/* what /proc shows as VmHWM: percpu_counter_read_positive of each RSS counter, and the high-water */
	s64 file = (s64)read_u64(mm, MW_OFF_MM_RSS_FILE);
	s64 anon = (s64)read_u64(mm, MW_OFF_MM_RSS_ANON);
	s64 shmem = (s64)read_u64(mm, MW_OFF_MM_RSS_SHMEM);
	u64 rss = (file > 0 ? file : 0) + (anon > 0 ? anon : 0) + (shmem > 0 ? shmem : 0);
	u64 hiwater = read_u64(mm, MW_OFF_MM_HIWATER);
	x.hwm_pages = hiwater > rss ? hiwater : rss;
	x.flags |= MW_EXIT_STATUS_KNOWN;
#else
	if (!s)
		return 0;
#endif
	if (!key.start_ns)
		key.start_ns = x.mono_ns; /* only to keep two exits of one pid in one interval apart */
	if (s) {
		__builtin_memcpy(&x.stats, s, sizeof(x.stats));
		x.flags |= MW_EXIT_HAS_STATS;
	}
	bpf_get_current_comm(x.comm, sizeof(x.comm));
	if (exits.update(&key, &x))
		count(MW_CTR_LOST_EVENTS);
	if (s)
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

/* ---- The /proc scan in the kernel: a task iterator with change detection (collectors/taskscan.py) ----
 *
 * bpf_iter__task runs once per task when the daemon read()s an iterator fd. For each thread-group leader
 * that is not a kernel thread it builds a struct mw_task from the fields /proc/PID/{stat,statm,status}
 * derive from, and writes it to the reader only when it differs from what was last written for that tgid
 * (a 64-bit digest kept in scan_last), or on a full pass (scan_ctl[0] != 0, set by the daemon). So a scan
 * of idle processes sends nothing to user space. Each visited leader's entry is stamped with the pass's
 * generation; a complete pass publishes how many it stamped (enum mw_scan_ctl), and the daemon deletes the
 * entries it did not stamp (processes reaped since the previous pass). scan_last entries also go when the
 * task struct is freed (sched_process_free, an RCU grace period or more after the reap), and the freed
 * identity is reported through scan_gone. A tgid that finds scan_last full is emitted on every pass,
 * marked MW_TASK_UNTRACKED, and counted.
 *
 * Fields are read with bpf_probe_read_kernel at offsets from the running kernel's BTF; neighbouring fields
 * are fetched in one read (a window), since each read is the dominant cost of the program. A kernel whose
 * layout spreads a window beyond MW_WINDOW_MAX bytes fails the compile (the daemon then scans /proc).
 */
#if defined(MW_HAVE_TASK) && defined(MW_OFF_TASK_PID) && defined(MW_OFF_TASK_TGID) && \
	defined(MW_OFF_TASK_FLAGS) && defined(MW_OFF_TASK_STATE) && defined(MW_OFF_TASK_EXIT_STATE) && \
	defined(MW_OFF_TASK_REAL_PARENT) && defined(MW_OFF_TASK_COMM) && defined(MW_OFF_TASK_CGROUPS) && \
	defined(MW_OFF_MM_TOTAL_VM) && defined(MW_OFF_MM_RSS_SWAP) && defined(MW_OFF_MM_PCPU_FILE) && \
	defined(MW_OFF_MM_PCPU_ANON) && defined(MW_OFF_MM_PCPU_SWAP) && defined(MW_OFF_MM_PCPU_SHMEM) && \
	defined(MW_OFF_TASK_CFS_RQ) && defined(MW_OFF_CFS_RQ_RQ) && defined(MW_OFF_RQ_CPU) && \
	defined(MW_PCPU_THIS_CPU_OFF) && defined(MW_NR_CPUS)
#define MW_HAVE_SCAN 1
#endif

#ifdef MW_HAVE_SCAN
#ifdef MW_TASK_SIZE
_Static_assert(sizeof(struct mw_task) == MW_TASK_SIZE, "struct mw_task differs from its Python mirror");
#endif
#define MW_PF_KTHREAD 0x00200000
#define MW_SCAN_FULL 1      /* scan_ctl[0] bits: emit every process */
#define MW_SCAN_CALIBRATE 2 /* only learn the per-CPU offsets (pcpu_off), emit nothing */
enum mw_scan_ctl {
	MW_CTL_MODE = 0,    /* MW_SCAN_* bits, set by the daemon for one pass */
	MW_CTL_GEN = 1,     /* the generation of the pass under way: stamped in each visited leader's entry */
	MW_CTL_STAMPED = 2, /* scan_last entries stamped with it so far */
	MW_CTL_DONE = 3,    /* entries stamped by the last complete pass (its generation is MW_CTL_GEN - 1) */
};
#define MW_WINDOW_MAX 192
#define MW_MIN(a, b) ((a) < (b) ? (a) : (b))
#define MW_MAX(a, b) ((a) > (b) ? (a) : (b))
/* window 1 of the task: mm, exit_state, pid, tgid, real_parent (adjacent in task_struct) */
#define MW_TW_LO MW_MIN(MW_MIN(MW_MIN(MW_OFF_TASK_MM, MW_OFF_TASK_EXIT_STATE), MW_MIN(MW_OFF_TASK_PID, \
	MW_OFF_TASK_TGID)), MW_OFF_TASK_REAL_PARENT)
#define MW_TW_HI (MW_MAX(MW_MAX(MW_MAX(MW_OFF_TASK_MM, MW_OFF_TASK_EXIT_STATE), MW_MAX(MW_OFF_TASK_PID, \
	MW_OFF_TASK_TGID)), MW_OFF_TASK_REAL_PARENT) + 8)
/* window 2 of the task: __state and flags */
#define MW_SW_LO MW_MIN(MW_OFF_TASK_STATE, MW_OFF_TASK_FLAGS)
#define MW_SW_HI (MW_MAX(MW_OFF_TASK_STATE, MW_OFF_TASK_FLAGS) + 4)
/* the mm: hiwater_rss and total_vm; the four rss_stat counters */
#define MW_MW_LO MW_MIN(MW_OFF_MM_HIWATER, MW_OFF_MM_TOTAL_VM)
#define MW_MW_HI (MW_MAX(MW_OFF_MM_HIWATER, MW_OFF_MM_TOTAL_VM) + 8)
/* the four rss_stat percpu_counters: their central counts and their per-CPU parts' pointers */
#define MW_RW_LO MW_MIN(MW_MIN(MW_OFF_MM_RSS_FILE, MW_OFF_MM_RSS_ANON), MW_MIN(MW_OFF_MM_RSS_SWAP, \
	MW_OFF_MM_RSS_SHMEM))
#define MW_RW_HI (MW_MAX(MW_MAX(MW_MAX(MW_OFF_MM_PCPU_FILE, MW_OFF_MM_PCPU_ANON), MW_MAX(MW_OFF_MM_PCPU_SWAP, \
	MW_OFF_MM_PCPU_SHMEM)), MW_MAX(MW_MAX(MW_OFF_MM_RSS_FILE, MW_OFF_MM_RSS_ANON), \
	MW_MAX(MW_OFF_MM_RSS_SWAP, MW_OFF_MM_RSS_SHMEM))) + 8)
_Static_assert(MW_TW_HI - MW_TW_LO <= MW_WINDOW_MAX, "task_struct fields too far apart for one read");
_Static_assert(MW_SW_HI - MW_SW_LO <= MW_WINDOW_MAX, "task_struct state and flags too far apart");
_Static_assert(MW_MW_HI - MW_MW_LO <= MW_WINDOW_MAX, "mm_struct hiwater_rss and total_vm too far apart");
_Static_assert(MW_RW_HI - MW_RW_LO <= MW_WINDOW_MAX, "mm_struct rss_stat counters too far apart");
#define MW_AT(buf, lo, off, type) (*(type *)((char *)(buf) + ((off) - (lo))))

/* bpf_iter's context; declared here because the kernel headers bcc compiles against lack it */
struct bpf_iter_meta__mw {
	void *seq;
	u64 session_id;
	u64 seq_num;
};
struct bpf_iter__task {
	struct bpf_iter_meta__mw *meta;
	void *task;
};

/* Each CPU's per-CPU area offset (__per_cpu_offset[cpu]), learnt from the kernel threads: a task's
 * se.cfs_rq->rq is its CPU's runqueue, a per-CPU variable, and this_cpu_off (x86) sits at a fixed distance
 * from it in the same area and holds that area's offset. /proc sums an rss_stat counter's per-CPU parts
 * (get_mm_counter_sum); without these offsets only the central count (off by up to the batch per CPU)
 * could be read. Filled on calibration and full passes; the collector checks every online CPU has one. */
_Static_assert(MW_NR_CPUS <= MW_MAX_CPUS, "more possible CPUs than the per-CPU sum handles");

static __always_inline void mw_calibrate(char *task)
{
	char *cfs_rq = (char *)read_u64(task, MW_OFF_TASK_CFS_RQ);
	char *rq = (char *)read_u64(cfs_rq, MW_OFF_CFS_RQ_RQ);
	u32 cpu = 0;
	if (!rq || bpf_probe_read_kernel(&cpu, sizeof(cpu), rq + MW_OFF_RQ_CPU) || cpu >= MW_NR_CPUS)
		return;
	u64 off = read_u64(rq, MW_PCPU_THIS_CPU_OFF);
	if (off)
		pcpu_off.update(&cpu, &off);
}

/* Add each CPU's part of the four counters (s32 each) to sums: file, anon, swap, shmem. The kernel
 * allocates the four parts of one mm together (percpu_counter_init_many), so one read per CPU fetches
 * them; otherwise four. */
static __always_inline void mw_sum_pcpu(char *rw, s64 sums[4])
{
	char *p[4] = {
		MW_AT(rw, MW_RW_LO, MW_OFF_MM_PCPU_FILE, char *),
		MW_AT(rw, MW_RW_LO, MW_OFF_MM_PCPU_ANON, char *),
		MW_AT(rw, MW_RW_LO, MW_OFF_MM_PCPU_SWAP, char *),
		MW_AT(rw, MW_RW_LO, MW_OFF_MM_PCPU_SHMEM, char *),
	};
	int together = p[1] == p[0] + 4 && p[2] == p[0] + 8 && p[3] == p[0] + 12;
	for (u32 c = 0; c < MW_NR_CPUS; c++) {
		u64 *off = pcpu_off.lookup(&c);
		if (!off || !*off)
			continue;
		s32 v[4] = {};
		if (together) {
			bpf_probe_read_kernel(v, sizeof(v), p[0] + *off);
		} else {
#pragma unroll
			for (int i = 0; i < 4; i++)
				bpf_probe_read_kernel(&v[i], sizeof(v[i]), p[i] + *off);
		}
#pragma unroll
		for (int i = 0; i < 4; i++)
			sums[i] += v[i];
	}
}

/* task_state_index() of include/linux/sched.h: the index of the letter /proc/PID/stat shows */
static __always_inline u16 mw_state_index(u32 state, u32 exit_state)
{
	u32 s = (state | exit_state) & 0x7f; /* TASK_REPORT */
	if ((state & 0x402) == 0x402)        /* TASK_IDLE */
		s = 0x80;                    /* TASK_REPORT_IDLE */
	if (state & (0x1000 | 0x8000))       /* TASK_RTLOCK_WAIT, TASK_FROZEN: shown as D */
		s = 2;
	u16 i = 0;
#pragma unroll
	for (int b = 0; b < 8; b++)
		if (s & (1u << b))
			i = b + 1; /* fls() */
	return i;
}

static __always_inline u64 mw_clamp(s64 v)
{
	return v > 0 ? (u64)v : 0;
}

static __always_inline u64 mw_digest(const struct mw_task *r)
{
	const u64 *w = (const u64 *)r;
	u64 h = 0x9E3779B97F4A7C15ULL;
#pragma unroll
	for (int i = 0; i < MW_TASK_CMP_WORDS; i++) {
		h = (h ^ w[i]) * 0xBF58476D1CE4E5B9ULL;
		h ^= h >> 31;
	}
	return h;
}

/* Scratch space for one task (the windows and the record exceed the 512-byte BPF stack together). */
struct mw_scan_scratch {
	char tw[MW_TW_HI - MW_TW_LO];
	char sw[MW_SW_HI - MW_SW_LO];
	char mw[MW_MW_HI - MW_MW_LO];
	char rw[MW_RW_HI - MW_RW_LO];
	struct mw_task r;
};
BPF_PERCPU_ARRAY(scan_scratch, struct mw_scan_scratch, 1);

int bpf_iter__task(struct bpf_iter__task *ctx)
{
	char *task = ctx->task;
	u32 zero = 0, at_gen = MW_CTL_GEN, at_stamped = MW_CTL_STAMPED, at_done = MW_CTL_DONE;
	u32 *ctl = scan_ctl.lookup(&zero);
	u32 *gen = scan_ctl.lookup(&at_gen);
	u32 *stamped = scan_ctl.lookup(&at_stamped);
	if (!ctl || !gen || !stamped)
		return 0;
	if (!task) {
		/* The pass is complete (task_seq_stop calls the program once more, with no task, only when the
		 * walk reached the end; an abandoned read() never gets here): every tracked leader alive during
		 * the whole pass carries its generation. Publish how many did and start the next generation. */
		u32 *done = scan_ctl.lookup(&at_done);
		if (done && !(*ctl & MW_SCAN_CALIBRATE)) {
			*done = *stamped;
			*stamped = 0;
			*gen += 1;
		}
		return 0;
	}
	struct mw_scan_scratch *x = scan_scratch.lookup(&zero);
	if (!x)
		return 0;
	if (bpf_probe_read_kernel(x->tw, sizeof(x->tw), task + MW_TW_LO))
		return 0;
	u32 tgid = MW_AT(x->tw, MW_TW_LO, MW_OFF_TASK_TGID, u32);
	if (MW_AT(x->tw, MW_TW_LO, MW_OFF_TASK_PID, u32) != tgid)
		return 0; /* a thread: /proc lists the leader only */
	if (bpf_probe_read_kernel(x->sw, sizeof(x->sw), task + MW_SW_LO))
		return 0;
	u32 mode = *ctl;
	if (MW_AT(x->sw, MW_SW_LO, MW_OFF_TASK_FLAGS, u32) & MW_PF_KTHREAD) {
		if (mode)
			mw_calibrate(task);
		return 0;
	}
	if (mode & MW_SCAN_CALIBRATE)
		return 0;

	struct mw_task *r = &x->r;
	__builtin_memset(r, 0, sizeof(*r));
	r->tgid = tgid;
	r->state = mw_state_index(MW_AT(x->sw, MW_SW_LO, MW_OFF_TASK_STATE, u32),
				  MW_AT(x->tw, MW_TW_LO, MW_OFF_TASK_EXIT_STATE, u32));
	r->cgroup_token = read_u64(task, MW_OFF_TASK_CGROUPS);
	bpf_probe_read_kernel(r->comm, sizeof(r->comm), task + MW_OFF_TASK_COMM);
	/* The parent's tgid costs a read of another task (a cache miss): the digest covers the parent
	 * pointer instead, and the tgid is read only for a record that is written out. */
	char *parent = MW_AT(x->tw, MW_TW_LO, MW_OFF_TASK_REAL_PARENT, char *);
	char *mm = MW_AT(x->tw, MW_TW_LO, MW_OFF_TASK_MM, char *);
	if (mm) {
		if (bpf_probe_read_kernel(x->mw, sizeof(x->mw), mm + MW_MW_LO) ||
		    bpf_probe_read_kernel(x->rw, sizeof(x->rw), mm + MW_RW_LO))
			return 0;
		r->total_vm = MW_AT(x->mw, MW_MW_LO, MW_OFF_MM_TOTAL_VM, u64);
		r->hiwater = MW_AT(x->mw, MW_MW_LO, MW_OFF_MM_HIWATER, u64);
		s64 sums[4] = {
			MW_AT(x->rw, MW_RW_LO, MW_OFF_MM_RSS_FILE, s64),
			MW_AT(x->rw, MW_RW_LO, MW_OFF_MM_RSS_ANON, s64),
			MW_AT(x->rw, MW_RW_LO, MW_OFF_MM_RSS_SWAP, s64),
			MW_AT(x->rw, MW_RW_LO, MW_OFF_MM_RSS_SHMEM, s64),
		};
		mw_sum_pcpu(x->rw, sums);
		r->file = mw_clamp(sums[0]); /* percpu_counter_sum_positive */
		r->anon = mw_clamp(sums[1]);
		r->swap = mw_clamp(sums[2]);
		r->shmem = mw_clamp(sums[3]);
	} else {
		r->flags = MW_TASK_NO_MM;
	}

	/* The task's identity is its task_struct while scan_last holds the entry (the entry goes when that
	 * struct is freed): its start time, another cache miss, is read only for a record written out. */
	struct mw_task_seen seen = {
		.task = (u64)task,
		.digest = mw_digest(r) ^ ((u64)parent * 0x94D049BB133111EBULL),
		.gen = *gen,
	};
	struct mw_task_seen *last = scan_last.lookup(&tgid);
	if (last && last->digest == seen.digest && last->task == seen.task && !(mode & MW_SCAN_FULL)) {
		if (last->gen != seen.gen) {
			last->gen = seen.gen;
			*stamped += 1;
		}
		return 0;
	}
	int untracked = 0;
	if (!last && scan_last.insert(&tgid, &seen)) {
		count(MW_CTR_SCAN_MAP_FULL);
		r->emit = MW_TASK_UNTRACKED;
		untracked = 1;
	}
	int fresh = (!last && !untracked) || (last && last->gen != seen.gen);
	if (parent)
		bpf_probe_read_kernel(&r->ppid, sizeof(r->ppid), parent + MW_OFF_TASK_TGID);
	r->start_ns = read_u64(task, MW_OFF_TASK_START);
	/* The record is remembered as written only once it is: a write that finds the reader's buffer full
	 * fails, and the iterator shows this task again at the next read(), which must not find it unchanged. */
	if (bpf_seq_write(ctx->meta->seq, r, sizeof(*r))) {
		if (!last && !untracked)
			scan_last.delete(&tgid);
		return 0;
	}
	if (last)
		scan_last.update(&tgid, &seen); /* replacing an entry works on a full map */
	if (fresh)
		*stamped += 1;
	return 0;
}

/* The task struct is freed: an RCU grace period after the parent reaped it (release_task), so it is off
 * the task list and no later iterator pass can meet it again. A freed leader the iterator tracked is
 * reported in scan_gone (with its start time: the daemon ignores it when it already knows the pid's next
 * process); its scan_last entry goes unless the pid was reused meanwhile. */
RAW_TRACEPOINT_PROBE(sched_process_free)
{
	char *task = (char *)ctx->args[0];
	u32 ids[2] = {};
	if (!task || bpf_probe_read_kernel(&ids[0], 4, task + MW_OFF_TASK_PID) ||
	    bpf_probe_read_kernel(&ids[1], 4, task + MW_OFF_TASK_TGID) || ids[0] != ids[1])
		return 0;
	u32 tgid = ids[1];
	struct mw_task_seen *last = scan_last.lookup(&tgid);
	if (!last)
		return 0;
	if (last->task == (u64)task) /* else the pid was reused before this free: the entry is the new one's */
		scan_last.delete(&tgid);
	struct mw_exit_key key = {.tgid = tgid, .start_ns = read_u64(task, MW_OFF_TASK_START)};
	u64 now = bpf_ktime_get_ns();
	if (scan_gone.update(&key, &now))
		count(MW_CTR_SCAN_GONE_LOST);
	return 0;
}
#endif /* MW_HAVE_SCAN */
