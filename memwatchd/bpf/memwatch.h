/* Structs shared by memwatch.bpf.c and memwatchd/collectors/bpf.py.
 *
 * The Python side mirrors these layouts with ctypes (collectors/bpf.py) and passes their sizes back in as
 * -DMW_STATS_SIZE / -DMW_EXIT_SIZE / -DMW_EVENT_SIZE, so a layout drift fails the compile instead of
 * garbling data. Only fixed-width types, largest first, so there is no hidden padding.
 */
#ifndef MEMWATCH_H
#define MEMWATCH_H

#define MW_COMM_LEN 16

/* Value of the per-process (tgid) stats map. */
struct mw_stats {
	__u64 mmap_count;
	__u64 mmap_bytes;
	__u64 munmap_count;
	__u64 munmap_bytes;
	__u64 brk_count;
	__u64 brk_bytes;           /* net heap growth since the baseline, floored at 0 */
	__u64 mremap_count;
	__u64 mremap_grow_bytes;   /* sum of new_len - old_len over growing mremaps */
	__u64 mremap_shrink_bytes; /* sum of old_len - new_len over shrinking mremaps */
	__s64 mapped_net;          /* page-rounded address-space changes since tracking began or the last exec */
	__s64 mapped_low;          /* lowest mapped_net seen (<= 0); mapped_bytes = mapped_net - mapped_low */
	__u64 start_ns;            /* the process's start_boottime (CLOCK_BOOTTIME ns); 0 = unknown */
	__u64 last_brk;            /* last program break seen; 0 = no baseline yet (first brk, or after exec) */
	__u64 last_update_ns;      /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
};

/* Key and value of the exits map: one record per ended process, drained by the daemon at each poll. */
struct mw_exit_key {
	__u64 start_ns; /* start_boottime, or the exit's bpf_ktime_get_ns when the start is unknown */
	__u32 tgid;
	__u32 _pad;
};

enum mw_exit_flags {
	MW_EXIT_HAS_STATS = 1,    /* stats holds the process's final counters */
	MW_EXIT_START_KNOWN = 2,  /* key.start_ns is the real start_boottime */
	MW_EXIT_STATUS_KNOWN = 4, /* status and hwm_pages were read from the task */
	MW_EXIT_OOM = 8,          /* the OOM killer chose this process (signal->oom_mm set) */
};

struct mw_exit {
	struct mw_stats stats; /* final counters when MW_EXIT_HAS_STATS, else zero */
	__u64 mono_ns;         /* bpf_ktime_get_ns at the exit */
	__u64 hwm_pages;       /* VmHWM at the exit: max(hiwater_rss, file + anon + shmem pages) */
	__s32 status;          /* task->exit_code: wait status ((code << 8), or the signal | 0x80 on core) */
	__u32 flags;           /* enum mw_exit_flags */
	char comm[MW_COMM_LEN];
};

enum mw_event_type {
	MW_EVENT_OOM = 2,
};

/* One ring-buffer record. Rare events only (OOM kill): counts stay in the maps. */
struct mw_event {
	__u64 mono_ns;
	__u64 total_vm_kb; /* from oom:mark_victim */
	__u64 anon_rss_kb;
	__u64 file_rss_kb;
	__u64 shmem_rss_kb;
	__u32 type;        /* enum mw_event_type */
	__u32 pid;         /* victim pid */
	__u32 uid;
	__s32 oom_score_adj;
	char comm[MW_COMM_LEN];
};

/* One record of the task iterator (bpf_iter__task, collectors/taskscan.py): a process as /proc shows it.
 * The first MW_TASK_CMP_WORDS u64 words are what the kernel compares with the previous record of the tgid;
 * emit is set on the copy written to the reader only. */
struct mw_task {
	__u64 start_ns;     /* the leader's start_boottime (CLOCK_BOOTTIME ns) */
	__u64 cgroup_token; /* task->cgroups (its css_set): changes on any cgroup move */
	__u64 file;         /* mm rss_stat counters (pages) summed over CPUs, clamped at 0, as /proc shows them */
	__u64 anon;
	__u64 shmem;
	__u64 swap;         /* MM_SWAPENTS */
	__u64 total_vm;     /* pages */
	__u64 hiwater;      /* mm->hiwater_rss (pages) */
	__u32 tgid;
	__u32 ppid;         /* real_parent->tgid */
	__u16 state;        /* task_state_index(): index into "RSDTtXZPI" as fs/proc/array.c shows it */
	__u16 flags;        /* enum mw_task_flags */
	__u32 _pad;
	char comm[MW_COMM_LEN];
	__u32 emit;         /* enum mw_task_emit, not compared */
	__u32 _pad2;
};
#define MW_TASK_CMP_WORDS 12

/* Value of scan_last: what the iterator last emitted for a tgid: its task_struct (the identity while the
 * entry lives: the entry goes when that struct is freed) and a digest of the compared words. */
struct mw_task_seen {
	__u64 task;
	__u64 digest;
	__u32 gen;  /* the last pass that visited the task (scan_ctl[MW_CTL_GEN] then) */
	__u32 _pad;
};

enum mw_task_flags {
	MW_TASK_NO_MM = 1, /* no address space (zombie, or past exit_mm): sizes 0 as /proc shows them */
};

enum mw_task_emit {
	MW_TASK_UNTRACKED = 1, /* scan_last was full: emitted on every pass, its exit is not reported */
};

/* Slots of the per-CPU counters array. */
enum mw_counter {
	MW_CTR_MAP_FULL = 0,       /* a new tgid could not be added: stats map full */
	MW_CTR_LOST_EVENTS = 1,    /* an exit record or ring-buffer event could not be stored: dropped */
	MW_CTR_SCAN_MAP_FULL = 2,  /* the task iterator emitted a process it could not track (scan_last full) */
	MW_CTR_SCAN_GONE_LOST = 3, /* a freed process could not be reported (scan_gone full) */
	MW_CTR_COUNT = 4,
};

#endif /* MEMWATCH_H */
