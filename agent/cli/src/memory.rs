//! The agent's resident memory: most of it is pages of the `ferry` binary's
//! code, and the kernel maps code in 64 KiB windows around each page the
//! agent touches ("fault-around"), so the few routines an idle agent runs
//! keep megabytes of unrelated code resident; the same goes for its
//! read-only data. `MADV_RANDOM` on those mappings turns that off for this
//! process, and `MADV_PAGEOUT` reclaims what start-up (argument parsing,
//! configuration, recovery) faulted in: only the pages the agent uses
//! afterwards come back, one by one.

use std::io::BufRead as _;

/// Applies the advice to every read-only mapping (code, read-only data) of
/// the running binary.
/// Failure changes nothing but the resident set (logged, not fatal).
pub fn trim_code() {
    let exe = match std::fs::read_link("/proc/self/exe") {
        Ok(p) => p,
        Err(_) => return,
    };
    let Ok(maps) = std::fs::File::open("/proc/self/maps") else {
        return;
    };
    for line in std::io::BufReader::new(maps).lines().map_while(Result::ok) {
        // "start-end perms offset dev inode path"
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let path = f.nth(3);
        if perms.contains('w') || path != exe.to_str() {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        advise(start, end - start);
    }
}

#[allow(unsafe_code)]
fn advise(start: usize, len: usize) {
    use rustix::mm::{Advice, madvise};
    let addr = start as *mut std::ffi::c_void;
    // SAFETY: [start, start + len) is a whole mapping of this process
    // (from /proc/self/maps). Both pieces of advice are hints that never
    // change the mapping's contents: `Random` only changes how later
    // faults read ahead, and `LinuxPageOut` asks the kernel to reclaim the
    // pages as memory pressure would (clean file pages are read again from
    // the file on the next access, anything written stays as it is or is
    // swapped). No memory the program relies on changes.
    let result = unsafe {
        madvise(addr, len, Advice::Random).and_then(|()| madvise(addr, len, Advice::LinuxPageOut))
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "madvise on the code mapping failed");
    }
}
