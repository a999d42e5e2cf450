/* Structs shared by triage.bpf.c and memwatchd/triage/tracer.py (leak triage of one process).
 *
 * The tracer reads the maps through bcc, which builds its ctypes views from these definitions, so there is
 * no hand-written mirror to drift. Fixed-width types, largest first: no hidden padding.
 */
#ifndef MEMWATCHD_TRIAGE_H
#define MEMWATCHD_TRIAGE_H

/* What made an outstanding entry. */
enum tr_kind {
	TR_KIND_MALLOC = 1, /* malloc, calloc, realloc, memalign family (the allocator's own entry points) */
	TR_KIND_MMAP = 2,   /* mmap called by the program (not by the allocator itself) */
	TR_KIND_BRK = 3,    /* heap growth by brk (syscall mode only) */
};

/* One sampled allocation not freed so far, keyed by its address. */
struct tr_alloc {
	__u64 size;    /* bytes requested */
	__u64 caller;  /* return address at the allocator's entry: the calling function, frame pointers or not */
	__s32 stack_id; /* user stack in the stacks map (frame-pointer walk); < 0 when none could be taken */
	__u32 kind;    /* enum tr_kind */
};

/* A sampled allocator call between its entry and its return, keyed by thread id. */
struct tr_inflight {
	__u64 size;
	__u64 caller;
	__u64 sp;      /* stack pointer at entry: tells nested allocator calls (realloc -> malloc) apart */
	__u64 out_ptr; /* posix_memalign: where the result is stored */
	__s32 stack_id;
	__u32 kind;
};

/* window_state[0] */
enum tr_window {
	TR_WINDOW_ATTACHING = 0, /* probes being attached: frees match, nothing is sampled yet */
	TR_WINDOW_OPEN = 1,      /* sampling */
	TR_WINDOW_ENDED = 2,     /* grace: frees still match, nothing new is sampled */
};

/* Per-CPU counters (array indexes). */
enum tr_counter {
	TR_CTR_CALLS = 0,     /* allocator entries seen (every call traps, sampled or not) */
	TR_CTR_SAMPLED = 1,   /* allocations sampled */
	TR_CTR_FREED = 2,     /* frees that matched a sampled allocation */
	TR_CTR_MAP_FULL = 3,  /* sampled allocations dropped: the outstanding map was full */
	TR_CTR_NO_STACK = 4,  /* sampled allocations without a stack (the caller frame is still known) */
	TR_CTR_FREES = 5,     /* free calls seen */
	TR_CTR_INTERNAL = 6,  /* mmap calls made by the allocator itself (not counted twice) */
	TR_CTR_N = 7,
};

#endif
