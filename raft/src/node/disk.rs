//! The data disk's free space, which a leader checks before it accepts a client write.

use std::time::{Duration, Instant};

/// How long a reading of the data disk's free bytes serves writes before it is taken again.
const FREE_DISK_TTL: Duration = Duration::from_millis(100);

/// The data disk's free bytes, read at most every [`FREE_DISK_TTL`] (a `statvfs` per write
/// was a tenth of a leader's system calls); the limit is a margin, so 100 ms is fresh enough.
#[derive(Default)]
pub(super) struct FreeDisk(std::sync::Mutex<Option<(Instant, Option<u64>)>>);

impl FreeDisk {
    pub(super) fn bytes(&self, path: &std::path::Path) -> Option<u64> {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some((at, free)) if at.elapsed() < FREE_DISK_TTL => free,
            _ => {
                let free = available_disk_bytes(path);
                *last = Some((Instant::now(), free));
                free
            }
        }
    }
}

/// Free bytes on the filesystem holding `path`, if the OS tells.
fn available_disk_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` is written by statvfs on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Some(st.f_bavail * st.f_frsize)
}
