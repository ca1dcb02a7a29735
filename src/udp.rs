//! Batched UDP I/O: `recvmmsg` and `sendmmsg`, the crate's only `unsafe` code.
//!
//! A media worker reads every datagram that is waiting with one `recvmmsg` per
//! [`BATCH`] datagrams and sends everything the engine produced in a loop turn with one
//! `sendmmsg` per [`BATCH`], instead of one syscall per datagram: on loopback the
//! syscall, not the copy, is most of the kernel's cost per packet.
//!
//! Why not a crate: `quinn-udp` batches receives but sends one destination per
//! syscall (GSO), and an SFU's fan-out goes to many destinations; `nix` wraps both
//! calls but its borrow-heavy API builds per-call iterators. The FFI here is two calls
//! on stack-built headers.
//!
//! Safety argument, once for the whole module: every `mmsghdr` handed to the kernel
//! points into buffers that live, unmoved, on this function's stack or in `self` for
//! the duration of the call (no reallocation happens between building the headers
//! and the syscall); every length passed is the length of the buffer it describes;
//! the kernel writes only `msg_len`, `msg_flags`, `msg_namelen`, the names and the
//! receive buffers, all of which are plain bytes for Rust. Addresses are converted
//! by value in [`write_addr`] / [`read_addr`], checking the family and length the
//! kernel reports.
//!
//! Invariants: no allocation per call ([`RecvBatch`] owns its buffers); a datagram
//! larger than [`SLOT`] is reported as truncated, never as a shorter valid one.
#![allow(unsafe_code)]

use std::io;
use std::mem::{self, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

/// Datagrams per `recvmmsg` / `sendmmsg` call.
pub const BATCH: usize = 32;

/// Receive buffer per datagram. WebRTC keeps datagrams under the path MTU (str0m and
/// browsers send at most ~1200–1500 bytes); anything longer is not media we serve.
pub const SLOT: usize = 2048;

/// Reusable receive buffers for [`BATCH`] datagrams.
pub struct RecvBatch {
    buf: Box<[u8]>,
    lens: [usize; BATCH],
    addrs: [Option<SocketAddr>; BATCH],
    truncated: [bool; BATCH],
    count: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl RecvBatch {
    /// [`BATCH`] slots of [`SLOT`] bytes.
    pub fn new() -> Self {
        Self {
            buf: vec![0u8; BATCH * SLOT].into_boxed_slice(),
            lens: [0; BATCH],
            addrs: [None; BATCH],
            truncated: [false; BATCH],
            count: 0,
        }
    }

    /// Reads up to [`BATCH`] waiting datagrams without blocking. `Ok(0)` when none is
    /// waiting. Errors other than "would block" and `EINTR` are returned (ICMP errors
    /// of an unconnected socket surface here and are not fatal to the caller).
    pub fn recv(&mut self, fd: &impl AsRawFd) -> io::Result<usize> {
        self.count = 0;
        let mut names: [MaybeUninit<libc::sockaddr_storage>; BATCH] =
            [const { MaybeUninit::zeroed() }; BATCH];
        // SAFETY: all-zero is a valid iovec/mmsghdr (null pointers, zero lengths); every
        // field the kernel reads is set below before the call.
        let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        let base = self.buf.as_mut_ptr();
        for i in 0..BATCH {
            // SAFETY: i * SLOT + SLOT <= buf.len() by construction.
            iovs[i].iov_base = unsafe { base.add(i * SLOT) }.cast();
            iovs[i].iov_len = SLOT;
            hdrs[i].msg_hdr.msg_name = names[i].as_mut_ptr().cast();
            hdrs[i].msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as _;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        let n = loop {
            // SAFETY: see the module's safety argument; hdrs has BATCH entries.
            let r = unsafe {
                libc::recvmmsg(
                    fd.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    BATCH as _,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if r >= 0 {
                break r as usize;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(0),
                _ => return Err(e),
            }
        };
        for i in 0..n.min(BATCH) {
            let h = &hdrs[i];
            self.truncated[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.lens[i] = (h.msg_len as usize).min(SLOT);
            // SAFETY: the kernel wrote msg_namelen bytes of a socket address into names[i]
            // (zero-initialised, so reading the whole storage is defined).
            let storage = unsafe { names[i].assume_init_ref() };
            self.addrs[i] = read_addr(storage, h.msg_hdr.msg_namelen as usize);
        }
        self.count = n.min(BATCH);
        Ok(self.count)
    }

    /// Datagram `i` of the last [`RecvBatch::recv`]: its source and bytes. `None` when
    /// `i` is out of range, the datagram was longer than [`SLOT`] (truncated), or its
    /// source address is not IPv4/IPv6.
    pub fn datagram(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        if i >= self.count || self.truncated[i] {
            return None;
        }
        let addr = self.addrs[i]?;
        let start = i * SLOT;
        Some((addr, &self.buf[start..start + self.lens[i]]))
    }
}

/// What [`send_batch`] did with its datagrams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendStats {
    /// Handed to the kernel.
    pub sent: usize,
    /// Dropped because the socket's send buffer was full (as a congested link would).
    pub would_block: usize,
    /// Refused one by one by the kernel (e.g. an address of the wrong family).
    pub failed: usize,
}

/// Sends every item with `sendmmsg`, [`BATCH`] per call. `get` gives each item's bytes
/// and destination. Once the kernel says the send buffer is full, the rest is dropped
/// and counted (a media worker never blocks on its socket); a datagram the kernel
/// refuses on its own is skipped and counted.
pub fn send_batch<T>(
    fd: &impl AsRawFd,
    items: &[T],
    get: impl Fn(&T) -> (&[u8], SocketAddr),
) -> SendStats {
    let mut stats = SendStats::default();
    let mut names: [MaybeUninit<libc::sockaddr_storage>; BATCH] =
        [const { MaybeUninit::zeroed() }; BATCH];
    // SAFETY: all-zero is a valid iovec/mmsghdr; the fields the kernel reads are set
    // below for every entry passed to it.
    let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
    for (chunk_no, chunk) in items.chunks(BATCH).enumerate() {
        for (i, item) in chunk.iter().enumerate() {
            let (bytes, dest) = get(item);
            // SAFETY: names[i] is a zeroed sockaddr_storage, large enough for any address.
            let len = write_addr(&dest, unsafe { names[i].assume_init_mut() });
            iovs[i].iov_base = bytes.as_ptr() as *mut libc::c_void;
            iovs[i].iov_len = bytes.len();
            hdrs[i].msg_hdr.msg_name = names[i].as_mut_ptr().cast();
            hdrs[i].msg_hdr.msg_namelen = len;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
            hdrs[i].msg_len = 0;
        }
        let mut start = 0;
        while start < chunk.len() {
            // SAFETY: entries start..chunk.len() were filled above and point at `items`
            // (borrowed for this whole function) and at names/iovs (on this stack).
            let r = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    hdrs.as_mut_ptr().add(start),
                    (chunk.len() - start) as _,
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                start += r as usize;
                stats.sent += r as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => {
                    stats.would_block += items.len() - (chunk_no * BATCH + start);
                    return stats;
                }
                _ => {
                    stats.failed += 1;
                    start += 1;
                }
            }
        }
    }
    stats
}

/// Writes `addr` into `out`, returning the length to pass to the kernel.
fn write_addr(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in; all-zero
            // is a valid sockaddr_in.
            let sin =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            *sin = unsafe { mem::zeroed() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            *sin6 = unsafe { mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Reads a socket address the kernel wrote (`len` bytes of `s`).
fn read_addr(s: &libc::sockaddr_storage, len: usize) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in of sufficient length.
            let sin = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
        a.set_nonblocking(true).expect("nonblocking");
        b.set_nonblocking(true).expect("nonblocking");
        (a, b)
    }

    fn recv_all(rx: &UdpSocket, batch: &mut RecvBatch, want: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut got = Vec::new();
        for _ in 0..1000 {
            let n = batch.recv(rx).expect("recv");
            for i in 0..n {
                if let Some((a, d)) = batch.datagram(i) {
                    got.push((a, d.to_vec()));
                }
            }
            if got.len() >= want {
                break;
            }
            if n == 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        got
    }

    #[test]
    fn batch_round_trip_keeps_order_sizes_and_sources() {
        let (tx, rx) = pair();
        let dest = rx.local_addr().expect("addr");
        // More than two batches, of varied sizes including empty and a full slot.
        let items: Vec<Vec<u8>> = (0..75u32)
            .map(|i| {
                let len = match i % 5 {
                    0 => 0,
                    1 => 1,
                    2 => 100,
                    3 => 1200,
                    _ => SLOT,
                };
                (0..len).map(|j| (i as usize + j) as u8).collect()
            })
            .collect();
        let stats = send_batch(&tx, &items, |d| (&d[..], dest));
        assert_eq!(
            stats,
            SendStats {
                sent: 75,
                would_block: 0,
                failed: 0
            }
        );
        let mut batch = RecvBatch::new();
        let got = recv_all(&rx, &mut batch, 75);
        assert_eq!(got.len(), 75);
        let src = tx.local_addr().expect("addr");
        for (i, (a, d)) in got.iter().enumerate() {
            assert_eq!(*a, src);
            assert_eq!(d, &items[i], "datagram {i}");
        }
        assert_eq!(batch.recv(&rx).expect("recv"), 0, "nothing left");
    }

    #[test]
    fn oversized_datagram_is_reported_truncated_not_short() {
        let (tx, rx) = pair();
        let dest = rx.local_addr().expect("addr");
        let big = vec![7u8; SLOT + 1];
        let small = vec![1u8; 10];
        let stats = send_batch(&tx, &[big, small.clone()], |d| (&d[..], dest));
        assert_eq!(stats.sent, 2);
        let mut batch = RecvBatch::new();
        let mut seen = 0;
        let mut valid = Vec::new();
        for _ in 0..1000 {
            let n = batch.recv(&rx).expect("recv");
            seen += n;
            for i in 0..n {
                if let Some((_, d)) = batch.datagram(i) {
                    valid.push(d.to_vec());
                }
            }
            if seen >= 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(seen, 2);
        assert_eq!(valid, vec![small]);
    }

    #[test]
    fn a_refused_datagram_is_skipped_and_the_rest_sent() {
        let (tx, rx) = pair();
        let dest = rx.local_addr().expect("addr");
        // An IPv6 destination on an IPv4 socket is refused by the kernel (EAFNOSUPPORT
        // or EINVAL) without failing its neighbours.
        let v6: SocketAddr = "[::1]:9".parse().expect("addr");
        let items = [
            (b"a".to_vec(), dest),
            (b"b".to_vec(), v6),
            (b"c".to_vec(), dest),
        ];
        let stats = send_batch(&tx, &items, |(d, a)| (&d[..], *a));
        assert_eq!(
            stats,
            SendStats {
                sent: 2,
                would_block: 0,
                failed: 1
            }
        );
        let mut batch = RecvBatch::new();
        let got = recv_all(&rx, &mut batch, 2);
        let payloads: Vec<_> = got.into_iter().map(|(_, d)| d).collect();
        assert_eq!(payloads, vec![b"a".to_vec(), b"c".to_vec()]);
    }

    #[test]
    fn ipv6_addresses_round_trip() {
        let Ok(rx) = UdpSocket::bind("[::1]:0") else {
            // No IPv6 loopback in this environment: the conversion is still covered below.
            let a: SocketAddr = "[fe80::1%2]:4000".parse().expect("addr");
            let mut s: libc::sockaddr_storage = unsafe { mem::zeroed() };
            let len = write_addr(&a, &mut s);
            assert_eq!(read_addr(&s, len as usize), Some(a));
            return;
        };
        let tx = UdpSocket::bind("[::1]:0").expect("bind");
        rx.set_nonblocking(true).expect("nonblocking");
        let dest = rx.local_addr().expect("addr");
        let stats = send_batch(&tx, &[b"six".to_vec()], |d| (&d[..], dest));
        assert_eq!(stats.sent, 1);
        let mut batch = RecvBatch::new();
        let got = recv_all(&rx, &mut batch, 1);
        assert_eq!(got, vec![(tx.local_addr().expect("addr"), b"six".to_vec())]);
    }

    #[test]
    fn empty_socket_reads_zero() {
        let (_tx, rx) = pair();
        let mut batch = RecvBatch::new();
        assert_eq!(batch.recv(&rx).expect("recv"), 0);
        assert!(batch.datagram(0).is_none());
    }
}
