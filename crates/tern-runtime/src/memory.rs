//! How a Tern process takes memory from the kernel.

/// Turns transparent huge pages off for this process, unless
/// `MIMALLOC_ALLOW_THP` is set (then the allocator's own setting rules).
///
/// mimalloc asks for huge pages on its arenas. A gateway holds many small,
/// long-lived objects per connection, so a huge page is faulted in (and
/// zeroed, 2 MiB at a time) for a few of them: a storm of reconnects
/// spent a sixth of its CPU clearing pages, and idle sessions held about
/// 1.7 KiB more each (BENCHMARKS.md, *Huge pages off*). Called first
/// thing in `main`; the flag covers every later fault of the process.
pub fn small_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::thread::disable_transparent_huge_pages(true) {
        // Only a kernel without the flag refuses; the process runs as is.
        eprintln!("transparent huge pages stay on: {error}");
    }
}
