//! FUSE over io_uring (Linux 6.14+): one request queue per CPU.
//!
//! Added to the vendored fuser for layerfs (see PATCHES.md). With it the kernel
//! hands a request to the queue of the CPU its caller runs on, and the thread
//! serving that queue is pinned to the same CPU: the caller's wake-up of the
//! server and the server's wake-up of the caller stay on one CPU instead of
//! crossing to an idle one, which on a virtual machine costs a halt/resume.
//!
//! Protocol (the kernel's fs/fuse/dev_uring.c and uapi fuse.h 7.42):
//! - The server asks for it in INIT (`FUSE_OVER_IO_URING`); the kernel offers it
//!   when the fuse module's `enable_uring` parameter is set.
//! - Each ring entry is registered with an `IORING_OP_URING_CMD` in a 128-byte
//!   SQE on a /dev/fuse fd of the connection: `cmd_op` REGISTER, `addr` an array
//!   of two iovecs (headers, payload), `len` 2, the command area a
//!   `fuse_uring_cmd_req` naming the queue. The payload buffer must hold the
//!   connection's largest request (`max(max_write, max_pages * PAGE_SIZE)`).
//! - Once every queue (one per possible CPU) has an entry waiting, requests go
//!   to the rings; until then, and always for FORGET and INTERRUPT, they come
//!   through read(2) on /dev/fuse, so the classic threads keep running.
//! - A request completes the entry's pending SQE: `fuse_in_header` in
//!   `headers.in_out`, the opcode's fixed argument in `headers.op_in`, all other
//!   arguments (names, write data) in the payload, whose length is in
//!   `headers.ring_ent_in_out.payload_sz`.
//! - The answer goes the same way back: `fuse_out_header` in `headers.in_out`,
//!   the rest in the payload, its length in `payload_sz`; COMMIT_AND_FETCH
//!   (with the request's unique id as commit id) hands it over and waits for the
//!   next request in one SQE. Teardown completes pending entries with ENOTCONN.
//!
//! Invariants: the kernel touches an entry's buffers only while its owning
//! thread is inside io_uring_enter; that thread enters only after the request's
//! reply has been written (it waits for it), so the reply writer, whichever
//! thread it runs on, has the buffers to itself. Buffers the kernel may still
//! know about are leaked, never freed.

use std::io;
use std::io::IoSlice;
use std::mem::size_of;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;

use io_uring::IoUring;
use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types;
use log::debug;
use log::error;
use log::info;
use log::warn;

use crate::Filesystem;
use crate::channel::ChannelSender;
use crate::ll::fuse_abi as abi;
use crate::reply::ReplySender;
use crate::request::RequestWithSender;
use crate::session::SessionEventLoop;

const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
const IN_HEADER: usize = size_of::<abi::fuse_in_header>();
const OUT_HEADER: usize = size_of::<abi::fuse_out_header>();
const OP_IN: usize = 128;

/// `struct fuse_uring_ent_in_out`.
#[repr(C)]
#[derive(Default)]
struct EntInOut {
    flags: u64,
    commit_id: u64,
    payload_sz: u32,
    padding: u32,
    reserved: u64,
}

/// `struct fuse_uring_req_header`.
#[repr(C, align(8))]
struct ReqHeader {
    in_out: [u8; 128],
    op_in: [u8; OP_IN],
    ent: EntInOut,
}

// The kernel's layouts (uapi fuse.h, io_uring.h).
const _: () = assert!(size_of::<ReqHeader>() == 288);
const _: () = assert!(size_of::<squeue::Entry128>() == 128);
const _: () = assert!(IN_HEADER == 40 && OUT_HEADER == 16);

/// `struct fuse_uring_cmd_req`, the start of the SQE's 80-byte command area.
fn cmd_req(commit_id: u64, qid: u16) -> [u8; 80] {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    cmd
}

/// Most queue threads a session starts (queues times threads per queue).
pub(crate) const MAX_THREADS: usize = 256;

/// The CPUs the kernel makes queues for (`num_possible_cpus()`).
pub(crate) fn possible_cpus() -> usize {
    let parsed = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| count_cpu_list(s.trim()));
    parsed.unwrap_or_else(|| {
        // SAFETY: sysconf has no memory effects.
        let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
        usize::try_from(n).unwrap_or(1).max(1)
    })
}

/// Counts the CPUs in a kernel CPU list such as `0-3,8,10-11`.
fn count_cpu_list(s: &str) -> Option<usize> {
    let mut n = 0;
    for part in s.split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().ok()? + 1 - a.parse::<usize>().ok()?,
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
    }
    (n > 0).then_some(n)
}

/// Reply state of the request an entry holds.
#[derive(Debug, Default)]
struct Replied {
    done: bool,
    /// The queue thread sleeps on the condition variable.
    waiting: bool,
}

/// One ring entry's buffers, shared by its queue thread (which copies requests
/// out of them) and the reply to the current request (which writes into them).
#[derive(Debug)]
pub(crate) struct UringSlot {
    header: NonNull<ReqHeader>,
    payload: NonNull<u8>,
    payload_len: usize,
    iov: Box<[libc::iovec; 2]>,
    replied: Mutex<Replied>,
    replied_cv: Condvar,
    /// For passthrough backing files and notifications.
    pub(crate) dev: ChannelSender,
}

// SAFETY: the raw pointers are owned allocations; access is serialised by the
// protocol described in the module doc and by `replied`.
unsafe impl Send for UringSlot {}
unsafe impl Sync for UringSlot {}

impl UringSlot {
    fn new(payload_len: usize, dev: ChannelSender) -> Self {
        let header = Box::new(ReqHeader {
            in_out: [0; 128],
            op_in: [0; OP_IN],
            ent: EntInOut::default(),
        });
        let header = NonNull::from(Box::leak(header));
        let payload = Box::leak(vec![0u8; payload_len].into_boxed_slice());
        let payload = NonNull::from(payload).cast::<u8>();
        let iov = Box::new([
            libc::iovec {
                iov_base: header.as_ptr().cast(),
                iov_len: size_of::<ReqHeader>(),
            },
            libc::iovec {
                iov_base: payload.as_ptr().cast(),
                iov_len: payload_len,
            },
        ]);
        UringSlot {
            header,
            payload,
            payload_len,
            iov,
            replied: Mutex::new(Replied::default()),
            replied_cv: Condvar::new(),
            dev,
        }
    }

    /// Copies the request the kernel delivered into `buf` in /dev/fuse layout
    /// (in header, fixed argument, the rest). Returns its length and commit id.
    fn take_request(&self, buf: &mut [u8]) -> io::Result<(usize, u64)> {
        // SAFETY: the kernel wrote the entry before completing its CQE and does
        // not touch it again until this thread re-enters io_uring.
        let hdr = unsafe { self.header.as_ref() };
        let len = u32::from_ne_bytes([
            hdr.in_out[0],
            hdr.in_out[1],
            hdr.in_out[2],
            hdr.in_out[3],
        ]) as usize;
        let payload_sz = hdr.ent.payload_sz as usize;
        let op_len = len.checked_sub(IN_HEADER + payload_sz);
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("io_uring request: {what} (len {len}, payload {payload_sz})"),
            )
        };
        let op_len = op_len.ok_or_else(|| bad("shorter than its payload"))?;
        if op_len > OP_IN || payload_sz > self.payload_len || len > buf.len() {
            return Err(bad("does not fit"));
        }
        buf[..IN_HEADER].copy_from_slice(&hdr.in_out[..IN_HEADER]);
        buf[IN_HEADER..IN_HEADER + op_len].copy_from_slice(&hdr.op_in[..op_len]);
        // SAFETY: as above; `payload_sz <= payload_len`.
        let payload = unsafe { std::slice::from_raw_parts(self.payload.as_ptr(), payload_sz) };
        buf[IN_HEADER + op_len..len].copy_from_slice(payload);
        Ok((len, hdr.ent.commit_id))
    }

    /// Writes a reply (out header, then payload) into the entry.
    pub(crate) fn send(&self, data: &[IoSlice<'_>]) -> io::Result<()> {
        let total: usize = data.iter().map(|d| d.len()).sum();
        let mut replied = self.replied.lock().unwrap_or_else(|e| e.into_inner());
        if replied.done {
            return Err(io::Error::other("second reply to one request"));
        }
        // SAFETY: see the module doc: the queue thread waits for `replied`
        // before the kernel may touch the buffers again, and the mutex keeps
        // writers apart.
        let hdr = unsafe { &mut *self.header.as_ptr() };
        if total < OUT_HEADER || total - OUT_HEADER > self.payload_len {
            // The queue thread waits for a reply: answer EIO rather than none.
            let out = errno_header(hdr.ent.commit_id, libc::EIO);
            hdr.in_out[..OUT_HEADER].copy_from_slice(zerocopy::IntoBytes::as_bytes(&out));
            hdr.ent.payload_sz = 0;
            replied.done = true;
            if replied.waiting {
                self.replied_cv.notify_all();
            }
            return Err(io::Error::other(format!(
                "reply of {total} bytes does not fit the io_uring entry: answered EIO"
            )));
        }
        let payload =
            unsafe { std::slice::from_raw_parts_mut(self.payload.as_ptr(), self.payload_len) };
        let (mut h, mut p) = (0usize, 0usize);
        for chunk in data {
            let mut c: &[u8] = chunk;
            if h < OUT_HEADER {
                let n = c.len().min(OUT_HEADER - h);
                hdr.in_out[h..h + n].copy_from_slice(&c[..n]);
                h += n;
                c = &c[n..];
            }
            payload[p..p + c.len()].copy_from_slice(c);
            p += c.len();
        }
        hdr.ent.payload_sz = p as u32;
        replied.done = true;
        // A notify is a futex syscall even without waiters: only when the
        // queue thread waits (the reply came from elsewhere, late).
        if replied.waiting {
            self.replied_cv.notify_all();
        }
        Ok(())
    }

    /// Waits until the current request has its reply, then arms for the next.
    fn wait_replied(&self) {
        let mut replied = self.replied.lock().unwrap_or_else(|e| e.into_inner());
        while !replied.done {
            replied.waiting = true;
            replied = self
                .replied_cv
                .wait(replied)
                .unwrap_or_else(|e| e.into_inner());
        }
        *replied = Replied::default();
    }

    fn sqe(&self, fd: i32, cmd_op: u32, commit_id: u64, qid: u16) -> squeue::Entry128 {
        let sqe = opcode::UringCmd80::new(types::Fd(fd), cmd_op)
            .cmd(cmd_req(commit_id, qid))
            .addr(Some(self.iov.as_ptr() as u64))
            .build();
        with_len(sqe, 2)
    }
}

impl Drop for UringSlot {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` by Box::leak; dropped only once the kernel
        // has released the entry (see `serve`).
        unsafe {
            drop(Box::from_raw(self.header.as_ptr()));
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.payload.as_ptr(),
                self.payload_len,
            )));
        }
    }
}

/// Sets the SQE's `len` field (the iovec count), which io-uring 0.7's
/// `UringCmd80` builder does not expose.
fn with_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    const LEN_OFFSET: usize = 24; // struct io_uring_sqe: opcode..off (8), addr (8), len
    // SAFETY: `Entry128` is `repr(C)`, 128 bytes of plain data (an io_uring_sqe
    // and its 64-byte extension); every bit pattern is valid.
    let mut bytes: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    bytes[LEN_OFFSET..LEN_OFFSET + 4].copy_from_slice(&len.to_ne_bytes());
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(bytes) }
}

/// Pins the calling thread to `cpu`; false when the CPU is not ours to use.
fn pin_to(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; CPU_SET checks nothing but we keep cpu
    // below CPU_SETSIZE.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return false;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn new_ring() -> io::Result<IoUring<squeue::Entry128, cqueue::Entry>> {
    // Task work (the kernel delivering a request into our buffers) runs only
    // when this thread asks for completions: no interruptions mid-request.
    IoUring::<squeue::Entry128, cqueue::Entry>::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(4)
        .or_else(|_| IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(4))
}

/// Why a queue thread stopped.
enum Stop {
    /// The connection is gone (unmount): the normal end.
    Disconnected,
    /// The kernel refused the registration: requests stay on /dev/fuse.
    Refused(io::Error),
}

/// Serves queue `qid` from a thread pinned to CPU `qid` (where it may run)
/// until the connection ends.
pub(crate) fn serve<FS: Filesystem>(
    ev: &SessionEventLoop<FS>,
    qid: u16,
    payload_len: usize,
) -> io::Result<()> {
    if !pin_to(qid.into()) {
        debug!("io_uring queue {qid}: cannot pin to CPU {qid}, running unpinned");
    }
    // `ev.ch` keeps the fd open for as long as this thread runs.
    let dev_fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(&ev.ch));
    let mut ring = new_ring()?;
    let slot = Arc::new(UringSlot::new(payload_len, ev.ch.sender()));
    // A request in /dev/fuse layout, 8-byte aligned like fuse_in_header.
    let mut words = vec![0u64; (IN_HEADER + OP_IN + payload_len).div_ceil(8)];
    // SAFETY: a u64 buffer viewed as bytes, same lifetime.
    let buf: &mut [u8] =
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) };
    let mut registered = false;
    let mut next = slot.sqe(dev_fd, CMD_REGISTER, 0, qid);
    let stop = loop {
        // SAFETY: the SQE points at `slot.iov` and the buffers it names,
        // which live until the kernel releases the entry (or forever).
        if unsafe { ring.submission().push(&next) }.is_err() {
            break Err(io::Error::other("io_uring submission queue full"));
        }
        let cqe = loop {
            match ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Transient (completion queue or memory pressure): once the
                // ring is live, a queue that stops serving hangs its CPU's
                // callers, so wait and retry.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY | libc::ENOMEM)) => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => break Err(e),
            }
            if let Some(cqe) = ring.completion().next() {
                break Ok(cqe);
            }
        };
        let cqe = match cqe {
            Ok(c) => c,
            Err(e) => break Err(e),
        };
        let res = cqe.result();
        if res < 0 {
            let err = io::Error::from_raw_os_error(-res);
            match -res {
                libc::ENOTCONN | libc::ECONNABORTED | libc::ENODEV | libc::ECANCELED => {
                    break Ok(Stop::Disconnected);
                }
                libc::EAGAIN if !registered => {
                    // The connection is not initialised yet; cannot happen after
                    // the handshake, but retrying is harmless.
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    next = slot.sqe(dev_fd, CMD_REGISTER, 0, qid);
                    continue;
                }
                _ if !registered => break Ok(Stop::Refused(err)),
                _ => {
                    // A commit the kernel could not match (the request ended
                    // meanwhile): the entry is out of the queue; put it back.
                    warn!("io_uring queue {qid}: commit failed: {err}; registering again");
                    next = slot.sqe(dev_fd, CMD_REGISTER, 0, qid);
                    continue;
                }
            }
        }
        registered = true;
        let commit_id = match slot.take_request(buf) {
            Ok((len, commit_id)) => {
                let sender = ReplySender::Uring(slot.clone());
                match RequestWithSender::with_sender(sender, &buf[..len]) {
                    Some(req) => req.dispatch(ev),
                    None => {
                        error!("io_uring queue {qid}: unparsable request");
                        slot.send_errno(libc::EIO);
                    }
                }
                commit_id
            }
            Err(e) => {
                error!("io_uring queue {qid}: {e}");
                slot.send_errno(libc::EIO)
            }
        };
        slot.wait_replied();
        next = slot.sqe(dev_fd, CMD_COMMIT_AND_FETCH, commit_id, qid);
    };
    match stop {
        Ok(Stop::Disconnected) => {
            ev.filesystem.connection_ended();
            Ok(())
        }
        Ok(Stop::Refused(e)) => {
            if qid == 0 {
                info!("io_uring registration refused ({e}): requests stay on /dev/fuse");
                ev.filesystem.uring_unused(&format!("refused: {e}"));
            }
            // Nothing registered: the kernel holds no pointer into the slot.
            Ok(())
        }
        Err(e) => {
            // The kernel may still hold the entry: never free its buffers.
            std::mem::forget(slot);
            Err(e)
        }
    }
}

impl UringSlot {
    /// Answers the request in the entry with `errno`. Returns the commit id
    /// (the request's unique id).
    fn send_errno(&self, errno: i32) -> u64 {
        // SAFETY: as in take_request.
        let commit_id = unsafe { self.header.as_ref() }.ent.commit_id;
        let out = errno_header(commit_id, errno);
        let _ = self.send(&[IoSlice::new(zerocopy::IntoBytes::as_bytes(&out))]);
        commit_id
    }
}

/// The reply header of an error answer to request `unique`.
fn errno_header(unique: u64, errno: i32) -> abi::fuse_out_header {
    abi::fuse_out_header {
        len: OUT_HEADER as u32,
        error: -errno,
        unique,
    }
}
