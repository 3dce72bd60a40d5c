//! Thin, safe wrappers over the system calls the agent needs (ioctl, mmap,
//! eventfd, poll), each returning a [`Failure`] that names the call.
//!
//! All `unsafe` of the agent lives here; the step code above it is safe Rust.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use msi_protocol::StepResult;

/// Why a step did not produce a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A system call failed with `errno`; `call` names it (`IOMMU_OPTION`).
    Errno { errno: i32, call: String },
    /// An ioctl that must return 0 on success returned `rc` > 0.
    Returned { rc: i32, call: String },
    /// The agent could not perform the step; `message` says why.
    Agent(String),
}

impl Failure {
    pub fn agent(message: impl Into<String>) -> Failure {
        Failure::Agent(message.into())
    }

    /// `err` from `call`: the errno when the OS gave one, else its text.
    pub fn io(err: &io::Error, call: impl Into<String>) -> Failure {
        let call = call.into();
        match err.raw_os_error() {
            Some(errno) => Failure::Errno { errno, call },
            None => Failure::Agent(format!("{call}: {err}")),
        }
    }

    /// The `errno` the last failed system call left, blamed on `call`.
    pub fn last_os(call: impl Into<String>) -> Failure {
        Failure::io(&io::Error::last_os_error(), call)
    }
}

impl From<Failure> for StepResult {
    fn from(failure: Failure) -> StepResult {
        match failure {
            Failure::Errno { errno, call } => StepResult::errno(errno, call),
            Failure::Returned { rc, call } => StepResult::returned(rc, call),
            Failure::Agent(message) => StepResult::agent_error(message),
        }
    }
}

pub type Outcome<T> = Result<T, Failure>;

/// `ioctl(fd, request, arg)` for the `_IO`-encoded iommufd/VFIO commands,
/// which all take a pointer to a structure the kernel reads and writes.
///
/// `T` must be one of the `#[repr(C)]` structures of `uapi` (or a buffer
/// laid out like one), sized as its own `size`/`argsz` field says.
///
/// Every command issued through here (iommufd's `IOMMU_*`, VFIO's cdev
/// `VFIO_DEVICE_*`) returns 0 on success, so a positive return is the
/// kernel's answer and is reported as such ([`Failure::Returned`]), never
/// taken for success: a handler that returns 1 where it means 0 would
/// otherwise pass unseen (mutant `ioas.c:656:const+1` of RFCv2 did).
pub fn ioctl<T>(fd: &impl AsRawFd, request: u32, arg: &mut T, call: &str) -> Outcome<()> {
    // SAFETY: `arg` is a valid, exclusively borrowed object of the size the
    // kernel expects for `request` (the caller passes the matching uapi
    // structure); the kernel writes only within it.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::Ioctl, arg as *mut T) };
    zero_on_success(rc, call)
}

/// An ioctl's return as [`ioctl`] judges it.
fn zero_on_success(rc: libc::c_int, call: &str) -> Outcome<()> {
    match rc {
        0 => Ok(()),
        rc if rc < 0 => Err(Failure::last_os(call)),
        rc => Err(Failure::Returned {
            rc,
            call: call.to_owned(),
        }),
    }
}

/// Like [`ioctl`] for a variable-length argument held in `buf` (a structure
/// followed by its flexible array).
pub fn ioctl_buf(fd: &impl AsRawFd, request: u32, buf: &mut [u32], call: &str) -> Outcome<()> {
    // SAFETY: `buf` is valid for its whole length, which the caller made
    // equal to the `argsz` the kernel reads from its head.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::Ioctl, buf.as_mut_ptr()) };
    zero_on_success(rc, call)
}

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

/// Private anonymous memory, unmapped on drop. IOAS mappings are backed by
/// it and it is also what edu DMA reads and writes.
#[derive(Debug)]
pub struct AnonMemory {
    ptr: NonNull<u8>,
    len: usize,
}

impl AnonMemory {
    /// `len` bytes (rounded up to whole pages, at least one page).
    pub fn new(len: u64) -> Outcome<AnonMemory> {
        let page = page_size() as u64;
        let rounded = len
            .max(1)
            .checked_next_multiple_of(page)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or_else(|| {
                Failure::agent(format!("length {len:#x} is too large to back with memory"))
            })?;
        // SAFETY: a fresh private anonymous mapping aliases nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                rounded,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Failure::last_os("mmap"));
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| Failure::agent("mmap returned null"))?;
        Ok(AnonMemory { ptr, len: rounded })
    }

    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Writes `data` at `offset`. Volatile, because a device reads it by DMA
    /// behind the compiler's back.
    pub fn write(&self, offset: usize, data: &[u8]) {
        let end = offset.saturating_add(data.len()).min(self.len);
        for (i, byte) in (offset..end).zip(data) {
            // SAFETY: `i < self.len`, inside the live mapping.
            unsafe { self.ptr.as_ptr().add(i).write_volatile(*byte) };
        }
    }

    /// Reads `len` bytes at `offset` (volatile: a device may have written them).
    pub fn read(&self, offset: usize, len: usize) -> Vec<u8> {
        let end = offset.saturating_add(len).min(self.len);
        // SAFETY: every index is `< self.len`, inside the live mapping.
        (offset..end)
            .map(|i| unsafe { self.ptr.as_ptr().add(i).read_volatile() })
            .collect()
    }
}

impl Drop for AnonMemory {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` came from a successful mmap and nothing else
        // unmaps it. Pages the kernel still pins stay valid for it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Reads `len` bytes (a multiple of 4) at `offset` of a PCI BAR through its
/// sysfs `resourceN` file, which only supports `mmap`: mapped shared,
/// read with 32-bit volatile loads (device registers), unmapped again.
pub fn read_mmio(resource: &std::path::Path, offset: u64, len: usize) -> Outcome<Vec<u8>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    if !len.is_multiple_of(4) || !offset.is_multiple_of(4) {
        return Err(Failure::agent(format!(
            "read_mmio {}: offset {offset:#x} and length {len} must be multiples of 4",
            resource.display()
        )));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_SYNC)
        .open(resource)
        .map_err(|e| Failure::io(&e, format!("open {}", resource.display())))?;
    let page = page_size() as u64;
    let base = offset - offset % page;
    let skip = (offset - base) as usize;
    let map_len = skip + len;
    let file_offset = libc::off_t::try_from(base)
        .map_err(|_| Failure::agent(format!("BAR offset {base:#x} does not fit off_t")))?;
    // SAFETY: a fresh shared mapping of the BAR, read only here and
    // unmapped before returning; nothing else aliases it in this process.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            file_offset,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(Failure::last_os(format!("mmap {}", resource.display())));
    }
    let words = (0..len / 4)
        // SAFETY: every word lies inside the mapping made above, 4-aligned
        // (the page base is, and `skip` and `4 * i` are multiples of 4).
        .map(|i| unsafe {
            ptr.cast::<u8>()
                .add(skip + 4 * i)
                .cast::<u32>()
                .read_volatile()
        })
        .flat_map(u32::to_le_bytes)
        .collect();
    // SAFETY: `ptr`/`map_len` came from the successful mmap above.
    unsafe { libc::munmap(ptr, map_len) };
    Ok(words)
}

/// A non-blocking eventfd, as VFIO signals interrupts on.
pub fn eventfd() -> Outcome<File> {
    // SAFETY: eventfd has no memory-safety preconditions.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(Failure::last_os("eventfd"));
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// The instant `timeout` from now; a timeout too large to represent is a
/// step error rather than an overflow panic.
pub fn deadline_after(timeout: Duration) -> Outcome<Instant> {
    Instant::now().checked_add(timeout).ok_or_else(|| {
        Failure::agent(format!(
            "timeout of {} ms is too large",
            timeout.as_millis()
        ))
    })
}

/// Waits until `fd` is readable or `deadline` passes; `true` if readable.
pub fn wait_readable(fd: &impl AsRawFd, deadline: Instant) -> Outcome<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Round up so that a sub-millisecond remainder still waits.
        let timeout = i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Failure::io(&err, "poll"));
        }
        if rc > 0 {
            return Ok(true);
        }
        if left == Duration::ZERO || Instant::now() >= deadline {
            return Ok(false);
        }
    }
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain old data; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return format!("unknown ({})", io::Error::last_os_error());
    }
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        // `c_char` is u8 on arm64 and i8 on x86_64: take the raw byte.
        .map(|&c| c.to_ne_bytes()[0])
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn failures_keep_errno_and_call() {
        let err = io::Error::from_raw_os_error(libc::EOPNOTSUPP);
        assert_eq!(
            Failure::io(&err, "IOMMU_OPTION"),
            Failure::Errno {
                errno: 95,
                call: "IOMMU_OPTION".into()
            }
        );
        assert_eq!(
            StepResult::from(Failure::io(&err, "IOMMU_OPTION")),
            StepResult::errno(95, "IOMMU_OPTION")
        );
        let other = io::Error::new(io::ErrorKind::UnexpectedEof, "short read");
        assert_eq!(
            Failure::io(&other, "pread config"),
            Failure::agent("pread config: short read")
        );
    }

    #[test]
    fn ioctl_on_a_non_device_is_an_errno_result_not_a_panic() {
        let file = tempfile_in_proc();
        let mut arg = crate::uapi::IommuOption {
            size: 24,
            ..Default::default()
        };
        let got = ioctl(&file, crate::uapi::IOMMU_OPTION, &mut arg, "IOMMU_OPTION");
        assert_eq!(
            got,
            Err(Failure::Errno {
                errno: libc::ENOTTY,
                call: "IOMMU_OPTION".into()
            })
        );
        assert_eq!(
            StepResult::from(got.unwrap_err()),
            StepResult::errno(25, "IOMMU_OPTION")
        );
    }

    #[test]
    fn a_positive_return_is_the_kernels_answer_not_success() {
        assert_eq!(zero_on_success(0, "IOMMU_OPTION"), Ok(()));
        let got = zero_on_success(1, "IOMMU_OPTION");
        assert_eq!(
            got,
            Err(Failure::Returned {
                rc: 1,
                call: "IOMMU_OPTION".into()
            })
        );
        assert_eq!(
            StepResult::from(got.unwrap_err()),
            StepResult::returned(1, "IOMMU_OPTION")
        );
        assert_eq!(
            serde_json::to_string(&StepResult::returned(1, "IOMMU_OPTION")).unwrap(),
            r#"{"returned":{"rc":1,"call":"IOMMU_OPTION"}}"#
        );
    }

    fn tempfile_in_proc() -> File {
        File::open("/proc/self/status").expect("procfs")
    }

    #[test]
    fn anon_memory_reads_back_what_was_written() {
        let mem = AnonMemory::new(10).unwrap();
        assert_eq!(mem.len(), page_size());
        mem.write(3, b"abc");
        assert_eq!(mem.read(2, 5), b"\0abc\0");
        // Out-of-range accesses are clipped, never undefined.
        mem.write(mem.len() - 1, b"xy");
        assert_eq!(mem.read(mem.len() - 1, 4), b"x");
    }

    #[test]
    fn eventfd_wait_sees_a_signal_and_times_out_without_one() {
        let mut efd = eventfd().unwrap();
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(wait_readable(&efd, soon), Ok(false));
        efd.write_all(&2u64.to_ne_bytes()).unwrap();
        assert_eq!(
            wait_readable(&efd, Instant::now() + Duration::from_secs(5)),
            Ok(true)
        );
        let mut buf = [0u8; 8];
        efd.read_exact(&mut buf).unwrap();
        assert_eq!(u64::from_ne_bytes(buf), 2);
    }

    #[test]
    fn huge_timeouts_are_errors_not_panics() {
        assert!(deadline_after(Duration::MAX).is_err());
        // The largest timeout a step can give (u64 milliseconds) still fits.
        assert!(deadline_after(Duration::from_millis(u64::MAX)).is_ok());
        assert!(deadline_after(Duration::from_millis(10)).is_ok());
    }

    #[test]
    fn kernel_release_is_not_empty() {
        assert!(!kernel_release().is_empty());
    }
}
