//! How the process uses glibc's allocator: what it keeps after freeing, and when it gives
//! memory back. Both are tuning only; elsewhere (other allocators) they do nothing.

/// Keeps freed memory in the process instead of handing it back to the system after every
/// query: a query over a day of many series allocates and frees tens of megabytes, and glibc's
/// defaults (trim above 128 KiB free, mmap for large blocks) made every query fault those pages
/// in again, about a sixth of its time. And bounds the allocator's arenas to two per core: each
/// arena keeps what its threads freed, and glibc's default of eight per core let the many
/// threads of a process (shards, flushes, queries, the cold tier's writers) hold freed memory
/// in arenas of their own, growing resident memory with every thread that allocated once
/// (the rollup churn test with the cold tier on grew 126 MB over 12 rounds, 73 to 86 MB with
/// four arenas).
/// Call before any other thread exists.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = i32::try_from(2 * cores).unwrap_or(i32::MAX).max(2);
        // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Hands memory freed by a flush (the head it emptied, encoding buffers) back to the system,
/// which [`keep_freed_memory`] otherwise keeps, so the process would stay at its peak until
/// the head refills.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Hands freed memory back to the system when the allocator keeps more of it than the
/// program holds (and over 64 MiB): the peaks of closing an hour or merging blocks, freed on
/// threads after their last flush, would otherwise stay resident until the next one. Runs at
/// most once in ten seconds however many shards call it; a query allocating again after it
/// faults its pages in once.
pub fn release_surplus() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    if now < last + 10
        || LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    if let Some((used, free)) = heap() {
        if free > 64 << 20 && free > used {
            release_free_memory();
        }
    }
}

/// The allocator's view of the heap: bytes handed out to the program, and bytes freed but
/// kept by the allocator (see [`keep_freed_memory`]). `None` with an allocator that does not
/// tell.
pub fn heap() -> Option<(u64, u64)> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        let m = unsafe { libc::mallinfo2() };
        // Small blocks from the arenas plus large ones mapped on their own.
        let used = (m.uordblks + m.hblkhd) as u64;
        Some((used, m.fordblks as u64))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// The process's memory gauges: resident memory (the standard
/// `process_resident_memory_bytes`) and the heap as the allocator sees it.
pub struct Memory;

impl crate::metrics::Stage for Memory {
    fn collect(&self, out: &mut crate::metrics::Out<'_>) {
        let rss = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok());
        if let Some(pages) = rss {
            // SAFETY: sysconf only reads a system constant.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
            out.gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                pages * page,
            );
        }
        if let Some((used, free)) = heap() {
            out.gauge(
                "strata_heap_in_use_bytes",
                "Heap bytes the program holds (the allocator's count).",
                used,
            );
            out.gauge(
                "strata_heap_free_bytes",
                "Heap bytes freed but kept by the allocator for reuse.",
                free,
            );
        }
    }
}
