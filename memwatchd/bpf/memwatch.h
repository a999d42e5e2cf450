/* Structs shared by memwatch.bpf.c and memwatchd/collectors/bpf.py.
 *
 * The Python side mirrors these layouts with ctypes (collectors/bpf.py) and passes their sizes back in as
 * -DMW_STATS_SIZE / -DMW_EVENT_SIZE, so a layout drift fails the compile instead of garbling data.
 * Only fixed-width types, largest first, so there is no hidden padding.
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
	__u64 brk_bytes;      /* net heap growth since the baseline, floored at 0 */
	__u64 last_brk;       /* last program break seen; 0 = no baseline yet (first brk, or after exec) */
	__u64 last_update_ns; /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
};

enum mw_event_type {
	MW_EVENT_EXIT = 1,
	MW_EVENT_OOM = 2,
};

/* One ring-buffer record. Rare events only (process exit, OOM kill): allocation counts stay in the map. */
struct mw_event {
	__u64 mono_ns;
	struct mw_stats stats; /* EXIT: final counters */
	__u64 total_vm_kb;     /* OOM: from oom:mark_victim */
	__u64 anon_rss_kb;
	__u64 file_rss_kb;
	__u64 shmem_rss_kb;
	__u32 type;            /* enum mw_event_type */
	__u32 pid;             /* tgid for EXIT, victim pid for OOM */
	__s32 exit_code;       /* EXIT: 0, not read (see memwatch.bpf.c) */
	__u32 uid;             /* OOM */
	__s32 oom_score_adj;   /* OOM */
	__u32 _pad;
	char comm[MW_COMM_LEN];
};

/* Slots of the per-CPU counters array. */
enum mw_counter {
	MW_CTR_MAP_FULL = 0,    /* a new tgid could not be added: stats map full */
	MW_CTR_LOST_EVENTS = 1, /* ring-buffer reservation failed: event dropped */
	MW_CTR_COUNT = 2,
};

#endif /* MEMWATCH_H */
