/* memwatchd leak triage: sampled allocations of ONE process, outstanding ones kept by address with the
 * allocating stack. Attached only while a triage runs (tracer.py, in a short-lived child), then detached.
 *
 * Compiled by bcc from memwatchd/triage/tracer.py with:
 *   -DTARGET_PID=N        the traced process (tgid); uprobes are also attached with pid=N
 *   -DSAMPLE_BYTES=N      mean bytes between samples: an allocation of s bytes is sampled with probability
 *                         min(1, s/N), so each sample stands for max(s, N) bytes (an unbiased estimate)
 *   -DMAX_ALLOCS=N        outstanding sampled allocations kept (map size); more are counted as map-full
 *   -DSTACK_ENTRIES=N     distinct stacks kept
 *   -DALLOC_LO/-DALLOC_HI address range of the allocator library in the target: mmap calls coming from
 *                         there are the allocator's own (already counted as malloc) and are skipped
 *   -DTR_SYSCALLS         syscall mode (Go, JVM, stripped static binaries: no malloc to probe): mmap,
 *                         munmap and brk syscall tracepoints of the target instead of uprobes
 *
 * Cost model: every probed call traps (uprobes cannot be sampled in the kernel before the trap), so the
 * target pays one trap per allocator entry and per free plus one return trap per allocation; sampling
 * bounds everything after the trap (stack walk, map updates) to about one call in SAMPLE_BYTES/size.
 */
#include <uapi/linux/ptrace.h>
#include "triage.h"

#ifndef TARGET_PID
#error "TARGET_PID is required"
#endif
#ifndef SAMPLE_BYTES
#define SAMPLE_BYTES 65536
#endif
#ifndef MAX_ALLOCS
#define MAX_ALLOCS 65536
#endif
#ifndef STACK_ENTRIES
#define STACK_ENTRIES 4096
#endif
#ifndef ALLOC_LO
#define ALLOC_LO 0
#define ALLOC_HI 0
#endif

BPF_HASH(allocs, u64, struct tr_alloc, MAX_ALLOCS);
BPF_HASH(inflight, u32, struct tr_inflight, 4096);
BPF_STACK_TRACE(stacks, STACK_ENTRIES);
BPF_PERCPU_ARRAY(counters, u64, TR_CTR_N);
/* [0]: TR_WINDOW_* set by the tracer. Allocations are sampled only while the window is open: not while
 * the probes are still being attached one by one (a malloc seen before its free probe exists would stay
 * "outstanding" forever), nor after the end, when frees still match for a short grace. */
BPF_ARRAY(window_state, u32, 1);

static __always_inline int window_open(void)
{
	int zero = 0;
	u32 *v = window_state.lookup(&zero);
	return v && *v == TR_WINDOW_OPEN;
}

static __always_inline void count(int idx)
{
	u64 *v = counters.lookup(&idx);
	if (v)
		(*v)++;
}

/* Sample s bytes with probability min(1, s / SAMPLE_BYTES). */
static __always_inline int sampled(u64 size)
{
	if (size >= SAMPLE_BYTES)
		return 1;
	if (size == 0)
		return 0;
	u64 threshold = (size << 32) / SAMPLE_BYTES; /* size < SAMPLE_BYTES < 2^32: no overflow */
	return bpf_get_prandom_u32() < threshold;
}

static __always_inline void record(u64 addr, u64 size, u64 caller, int stack_id, u32 kind)
{
	if (!window_open())
		return;
	struct tr_alloc a = {.size = size, .caller = caller, .stack_id = stack_id, .kind = kind};
	if (allocs.update(&addr, &a) != 0) {
		count(TR_CTR_MAP_FULL);
		return;
	}
	count(TR_CTR_SAMPLED);
}

static __always_inline void forget(u64 addr)
{
	if (addr && allocs.delete(&addr) == 0)
		count(TR_CTR_FREED);
}

#ifndef TR_SYSCALLS

static __always_inline u32 tid_of_target(void)
{
	u64 id = bpf_get_current_pid_tgid();
	return (id >> 32) == TARGET_PID ? (u32)id : 0;
}

/* Entry of an allocating call: decide whether to sample, and if so keep what the return probe needs. */
static __always_inline int alloc_enter(struct pt_regs *ctx, u64 size, u64 out_ptr, u32 kind)
{
	u32 tid = tid_of_target();
	if (!tid || !window_open())
		return 0;
	count(TR_CTR_CALLS);
	u64 sp = PT_REGS_SP(ctx);
	struct tr_inflight *outer = inflight.lookup(&tid);
	if (outer && outer->sp > sp)
		return 0; /* nested inside a sampled allocator call (realloc -> malloc): the outer one records */
	if (!sampled(size)) {
		if (outer)
			inflight.delete(&tid); /* stale (its return was never seen) */
		return 0;
	}
	struct tr_inflight f = {.size = size, .sp = sp, .out_ptr = out_ptr, .kind = kind};
	/* at the entry the return address is on top of the stack: the caller, even without frame pointers */
	bpf_probe_read_user(&f.caller, sizeof(f.caller), (void *)sp);
	f.stack_id = stacks.get_stackid(ctx, BPF_F_USER_STACK);
	if (f.stack_id < 0)
		count(TR_CTR_NO_STACK);
	inflight.update(&tid, &f);
	return 0;
}

/* Return of an allocating call that returns the pointer. */
int tr_alloc_return(struct pt_regs *ctx)
{
	u32 tid = tid_of_target();
	if (!tid)
		return 0;
	struct tr_inflight *f = inflight.lookup(&tid);
	if (!f || f->sp >= PT_REGS_SP(ctx))
		return 0; /* not sampled, or the return of a nested call inside a sampled one */
	u64 addr = PT_REGS_RC(ctx);
	if (addr && f->kind == TR_KIND_MMAP && (s64)addr < 0)
		addr = 0; /* MAP_FAILED */
	if (addr)
		record(addr, f->size, f->caller, f->stack_id, f->kind);
	inflight.delete(&tid);
	return 0;
}

/* Return of posix_memalign: 0 on success, the pointer is in *out_ptr. */
int tr_memalign_return(struct pt_regs *ctx)
{
	u32 tid = tid_of_target();
	if (!tid)
		return 0;
	struct tr_inflight *f = inflight.lookup(&tid);
	if (!f || f->sp >= PT_REGS_SP(ctx))
		return 0;
	u64 addr = 0;
	if (PT_REGS_RC(ctx) == 0)
		bpf_probe_read_user(&addr, sizeof(addr), (void *)f->out_ptr);
	if (addr)
		record(addr, f->size, f->caller, f->stack_id, f->kind);
	inflight.delete(&tid);
	return 0;
}

int tr_malloc(struct pt_regs *ctx) { return alloc_enter(ctx, PT_REGS_PARM1(ctx), 0, TR_KIND_MALLOC); }

int tr_calloc(struct pt_regs *ctx)
{
	return alloc_enter(ctx, PT_REGS_PARM1(ctx) * PT_REGS_PARM2(ctx), 0, TR_KIND_MALLOC);
}

/* aligned_alloc(align, size), memalign(align, size) */
int tr_aligned(struct pt_regs *ctx) { return alloc_enter(ctx, PT_REGS_PARM2(ctx), 0, TR_KIND_MALLOC); }

/* posix_memalign(&ptr, align, size) */
int tr_posix_memalign(struct pt_regs *ctx)
{
	return alloc_enter(ctx, PT_REGS_PARM3(ctx), PT_REGS_PARM1(ctx), TR_KIND_MALLOC);
}

/* realloc(old, size) = free(old) + malloc(size) */
int tr_realloc(struct pt_regs *ctx)
{
	if (!tid_of_target())
		return 0;
	count(TR_CTR_FREES);
	forget(PT_REGS_PARM1(ctx));
	return alloc_enter(ctx, PT_REGS_PARM2(ctx), 0, TR_KIND_MALLOC);
}

/* free(ptr), and jemalloc's sdallocx/dallocx(ptr, ...) */
int tr_free(struct pt_regs *ctx)
{
	if (!tid_of_target())
		return 0;
	count(TR_CTR_FREES);
	forget(PT_REGS_PARM1(ctx));
	return 0;
}

/* mmap(addr, len, ...) through the libc wrapper; the allocator's own calls are skipped */
int tr_mmap(struct pt_regs *ctx)
{
	if (!tid_of_target())
		return 0;
#if ALLOC_HI
	u64 caller = 0;
	bpf_probe_read_user(&caller, sizeof(caller), (void *)PT_REGS_SP(ctx));
	if (caller >= ALLOC_LO && caller < ALLOC_HI) {
		count(TR_CTR_INTERNAL);
		return 0;
	}
#endif
	return alloc_enter(ctx, PT_REGS_PARM2(ctx), 0, TR_KIND_MMAP);
}

int tr_munmap(struct pt_regs *ctx)
{
	if (!tid_of_target())
		return 0;
	count(TR_CTR_FREES);
	forget(PT_REGS_PARM1(ctx));
	return 0;
}

#else /* TR_SYSCALLS */

#define TR_PROT_NONE 0
BPF_ARRAY(brk_state, u64, 2); /* [0] break at the first brk seen, [1] latest break */

static __always_inline int is_target(void)
{
	return (bpf_get_current_pid_tgid() >> 32) == TARGET_PID;
}

TRACEPOINT_PROBE(syscalls, sys_enter_mmap)
{
	if (!is_target() || !window_open())
		return 0;
	count(TR_CTR_CALLS);
	u64 len = args->len;
	if (args->prot == TR_PROT_NONE || !sampled(len))
		return 0; /* PROT_NONE reserves address space, it is not memory */
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct tr_inflight f = {.size = len, .kind = TR_KIND_MMAP};
	f.stack_id = stacks.get_stackid(args, BPF_F_USER_STACK);
	if (f.stack_id < 0)
		count(TR_CTR_NO_STACK);
	inflight.update(&tid, &f);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_mmap)
{
	if (!is_target())
		return 0;
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct tr_inflight *f = inflight.lookup(&tid);
	if (!f)
		return 0;
	long ret = args->ret;
	if (ret > 0 || ret < -4095)
		record((u64)ret, f->size, 0, f->stack_id, TR_KIND_MMAP);
	inflight.delete(&tid);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_munmap)
{
	if (!is_target())
		return 0;
	count(TR_CTR_FREES);
	forget(args->addr);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_brk)
{
	if (!is_target())
		return 0;
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct tr_inflight f = {.kind = TR_KIND_BRK};
	f.stack_id = stacks.get_stackid(args, BPF_F_USER_STACK);
	inflight.update(&tid, &f);
	return 0;
}

/* Heap growth [old break, new break) is one allocation at the old break; the tracer drops the parts
 * above the final break (a shrink). Every growth is recorded: brk calls are rare. */
TRACEPOINT_PROBE(syscalls, sys_exit_brk)
{
	if (!is_target())
		return 0;
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct tr_inflight *f = inflight.lookup(&tid);
	if (!f)
		return 0;
	int first = 0, last = 1;
	u64 *base = brk_state.lookup(&first), *prev = brk_state.lookup(&last);
	u64 now = (u64)args->ret;
	if (base && prev) {
		if (*base == 0)
			*base = now;
		else if (*prev && now > *prev) {
			count(TR_CTR_CALLS);
			record(*prev, now - *prev, 0, f->stack_id, TR_KIND_BRK);
		}
		*prev = now;
	}
	inflight.delete(&tid);
	return 0;
}

#endif
