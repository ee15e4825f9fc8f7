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
