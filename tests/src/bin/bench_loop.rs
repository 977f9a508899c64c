//! The benchmark's measured loops, run by `cargo xtask bench`:
//!
//!   credwatch-bench-loop open PATH N           openat(O_RDONLY) + close, N times
//!   credwatch-bench-loop open-expanded PATH N  the same with an expanded descriptor table
//!   credwatch-bench-loop getppid N             getppid, N times (a syscall no probe sees)
//!   credwatch-bench-loop tcp N                 64-byte send + recv over a loopback TCP pair, N times
//!   credwatch-bench-loop uring N               an io_uring NOP submitted and reaped, N times (what
//!                                              every io_uring completion pays)
//!   credwatch-bench-loop tls PORT CERT KEY N   N token lookups (HTTP/1.1 keep-alive) over one TLS
//!                                              connection to a server on 127.0.0.1:PORT in this
//!                                              process; both ends on the system's libssl.so.3
//!                                              (dlopen: no OpenSSL at build time), so credwatch's
//!                                              uprobes fire in both, as in a real client and server
//!
//! A process's descriptor table lives inside `files_struct` until a descriptor above 63 is used
//! (or inherited: a child's table is sized at fork from its parent's highest open descriptor).
//! credwatch's probe reads the first kind with direct loads and the second through helper calls,
//! so the loops control it: `open` runs in a child forked after closing every descriptor above 2
//! (a fresh table, as most processes have), `open-expanded` first dups a descriptor to 100.
//!
//! Prints one JSON line on stdout: `{"ns_per_op":F,"timed":N,"warmup":W}`, the mean over the N timed
//! iterations after W untimed ones (the caller needs W too: an exact reader count sees N + W opens).
//! The loops make only the syscalls they measure: no allocation or formatting in the timed part.
use std::{ffi::CString, hint::black_box, process::ExitCode, time::Instant};

/// Untimed iterations first, so the page cache, dentry cache and branch predictors are warm.
fn warmup(n: u64) -> u64 {
    (n / 20).clamp(1, 10_000)
}

fn open_close(path: &CString, n: u64) -> Result<(), String> {
    for _ in 0..n {
        // SAFETY: path is a valid NUL-terminated string; the descriptor is closed right away.
        let fd = unsafe {
            libc::openat(
                libc::AT_FDCWD,
                path.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(format!(
                "open {path:?}: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: fd was just opened by this loop.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// A connected loopback TCP pair (no auth endpoint: what every other socket pays).
fn tcp_pair() -> Result<(std::net::TcpStream, std::net::TcpStream), String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let a = std::net::TcpStream::connect(l.local_addr().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let (b, _) = l.accept().map_err(|e| e.to_string())?;
    a.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok((a, b))
}

fn tcp_ping(
    a: &mut std::net::TcpStream,
    b: &mut std::net::TcpStream,
    n: u64,
) -> Result<(), String> {
    use std::io::{Read as _, Write as _};
    let out = [7u8; 64];
    let mut buf = [0u8; 64];
    for _ in 0..n {
        a.write_all(&out).map_err(|e| e.to_string())?;
        b.read_exact(&mut buf).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The libssl.so.3 functions the TLS loop calls, resolved with `dlopen`/`dlsym`.
struct Ssl {
    ctx_new: unsafe extern "C" fn(*const libc::c_void) -> *mut libc::c_void,
    client_method: unsafe extern "C" fn() -> *const libc::c_void,
    server_method: unsafe extern "C" fn() -> *const libc::c_void,
    use_certificate_file:
        unsafe extern "C" fn(*mut libc::c_void, *const libc::c_char, libc::c_int) -> libc::c_int,
    use_private_key_file:
        unsafe extern "C" fn(*mut libc::c_void, *const libc::c_char, libc::c_int) -> libc::c_int,
    new: unsafe extern "C" fn(*mut libc::c_void) -> *mut libc::c_void,
    set_fd: unsafe extern "C" fn(*mut libc::c_void, libc::c_int) -> libc::c_int,
    connect: unsafe extern "C" fn(*mut libc::c_void) -> libc::c_int,
    accept: unsafe extern "C" fn(*mut libc::c_void) -> libc::c_int,
    write: unsafe extern "C" fn(*mut libc::c_void, *const libc::c_void, libc::c_int) -> libc::c_int,
    read: unsafe extern "C" fn(*mut libc::c_void, *mut libc::c_void, libc::c_int) -> libc::c_int,
}

/// A symbol's address as the function pointer type `F`.
///
/// # Safety
/// `F` must be a function pointer type matching the symbol's C signature.
unsafe fn as_fn<F: Copy>(f: *mut libc::c_void) -> F {
    assert_eq!(size_of::<F>(), size_of::<*mut libc::c_void>());
    // SAFETY: same size (asserted); the caller vouches for the signature.
    unsafe { std::mem::transmute_copy(&f) }
}

/// A connection object (`SSL *`), moved to the server thread.
struct Conn(*mut libc::c_void);
// SAFETY: an SSL object is used by one thread at a time (created here, used only there).
unsafe impl Send for Conn {}

const REQUEST: &[u8] = b"GET /v1/auth/token/lookup-self HTTP/1.1\r\nHost: 127.0.0.1\r\n\
X-Vault-Token: bench\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
Content-Length: 21\r\n\r\n{\"data\":{\"ttl\":3600}}";

impl Ssl {
    fn load() -> Result<Self, String> {
        // SAFETY: a NUL-terminated name; the handle is never closed.
        let lib = unsafe { libc::dlopen(c"libssl.so.3".as_ptr(), libc::RTLD_NOW) };
        if lib.is_null() {
            return Err("cannot dlopen libssl.so.3".into());
        }
        let sym = |name: &std::ffi::CStr| {
            // SAFETY: lib is a live handle, name is NUL-terminated.
            let f = unsafe { libc::dlsym(lib, name.as_ptr()) };
            if f.is_null() {
                Err(format!("libssl.so.3 has no {name:?}"))
            } else {
                Ok(f)
            }
        };
        // SAFETY: each symbol has the C signature of the field it is cast to (OpenSSL 3 API).
        unsafe {
            Ok(Ssl {
                ctx_new: as_fn(sym(c"SSL_CTX_new")?),
                client_method: as_fn(sym(c"TLS_client_method")?),
                server_method: as_fn(sym(c"TLS_server_method")?),
                use_certificate_file: as_fn(sym(c"SSL_CTX_use_certificate_file")?),
                use_private_key_file: as_fn(sym(c"SSL_CTX_use_PrivateKey_file")?),
                new: as_fn(sym(c"SSL_new")?),
                set_fd: as_fn(sym(c"SSL_set_fd")?),
                connect: as_fn(sym(c"SSL_connect")?),
                accept: as_fn(sym(c"SSL_accept")?),
                write: as_fn(sym(c"SSL_write")?),
                read: as_fn(sym(c"SSL_read")?),
            })
        }
    }

    /// Writes all of `buf`.
    fn write_all(&self, ssl: *mut libc::c_void, buf: &[u8]) -> Result<(), String> {
        // SAFETY: ssl is a connected SSL object; buf is valid for its length.
        let n = unsafe { (self.write)(ssl, buf.as_ptr().cast(), buf.len() as libc::c_int) };
        if n as usize == buf.len() {
            Ok(())
        } else {
            Err(format!("SSL_write returned {n}"))
        }
    }

    /// Reads until `buf` is full.
    fn read_exact(&self, ssl: *mut libc::c_void, buf: &mut [u8]) -> Result<(), String> {
        let mut at = 0;
        while at < buf.len() {
            let rest = &mut buf[at..];
            // SAFETY: ssl is a connected SSL object; rest is valid for its length.
            let n =
                unsafe { (self.read)(ssl, rest.as_mut_ptr().cast(), rest.len() as libc::c_int) };
            if n <= 0 {
                return Err(format!("SSL_read returned {n}"));
            }
            at += n as usize;
        }
        Ok(())
    }
}

/// The TLS loop's two ends, connected: the client's `SSL *`, and the server thread answering
/// each request with `RESPONSE` until the client goes away.
fn tls_pair(
    ssl: &'static Ssl,
    port: u16,
    cert: &str,
    key: &str,
) -> Result<*mut libc::c_void, String> {
    use std::os::fd::IntoRawFd as _;
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    let cert = CString::new(cert).map_err(|e| e.to_string())?;
    let key = CString::new(key).map_err(|e| e.to_string())?;
    // SAFETY: OpenSSL calls with live objects and NUL-terminated paths; 1 is SSL_FILETYPE_PEM.
    let server = unsafe {
        let ctx = (ssl.ctx_new)((ssl.server_method)());
        if ctx.is_null()
            || (ssl.use_certificate_file)(ctx, cert.as_ptr(), 1) != 1
            || (ssl.use_private_key_file)(ctx, key.as_ptr(), 1) != 1
        {
            return Err("cannot set up the TLS server (certificate or key)".into());
        }
        Conn((ssl.new)(ctx))
    };
    std::thread::spawn(move || {
        let server = server;
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        // SAFETY: the accepted socket's descriptor now belongs to the SSL object.
        unsafe { (ssl.set_fd)(server.0, stream.into_raw_fd()) };
        // SAFETY: server.0 is a live SSL object with a descriptor.
        if unsafe { (ssl.accept)(server.0) } != 1 {
            return;
        }
        let mut request = vec![0u8; REQUEST.len()];
        while ssl.read_exact(server.0, &mut request).is_ok()
            && ssl.write_all(server.0, RESPONSE).is_ok()
        {}
    });
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    // SAFETY: as above; the client verifies nothing (its peer is this process).
    unsafe {
        let ctx = (ssl.ctx_new)((ssl.client_method)());
        let client = (ssl.new)(ctx);
        if client.is_null() {
            return Err("SSL_new failed".into());
        }
        (ssl.set_fd)(client, stream.into_raw_fd());
        if (ssl.connect)(client) != 1 {
            return Err("the TLS handshake failed".into());
        }
        Ok(client)
    }
}

fn tls_lookups(ssl: &Ssl, client: *mut libc::c_void, n: u64) -> Result<(), String> {
    let mut response = vec![0u8; RESPONSE.len()];
    for _ in 0..n {
        ssl.write_all(client, REQUEST)?;
        ssl.read_exact(client, &mut response)?;
    }
    Ok(())
}

fn uring_nops(ring: &mut io_uring::IoUring, n: u64) -> Result<(), String> {
    for _ in 0..n {
        let nop = io_uring::opcode::Nop::new().build();
        // SAFETY: a NOP points at no memory.
        unsafe { ring.submission().push(&nop) }.map_err(|_| "ring full".to_owned())?;
        ring.submit_and_wait(1).map_err(|e| e.to_string())?;
        ring.completion().next().ok_or("no completion")?;
    }
    Ok(())
}

fn getppid(n: u64) {
    for _ in 0..n {
        // SAFETY: getppid has no preconditions.
        black_box(unsafe { libc::getppid() });
    }
}

/// The mean ns per timed iteration, and the number of untimed warm-up iterations.
fn run(args: &[String]) -> Result<(f64, u64), String> {
    let count = |s: Option<&String>| -> Result<u64, String> {
        let s = s.ok_or("missing iteration count")?;
        s.parse::<u64>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or(format!("bad iteration count {s:?}"))
    };
    match args.first().map(String::as_str) {
        Some("open") => {
            let path = args.get(1).ok_or("missing PATH")?;
            let n = count(args.get(2))?;
            let path = CString::new(path.as_str()).map_err(|e| e.to_string())?;
            open_close(&path, warmup(n))?;
            let t = Instant::now();
            open_close(&path, n)?;
            Ok((t.elapsed().as_nanos() as f64 / n as f64, warmup(n)))
        }
        Some("open-expanded") => {
            // SAFETY: dup2 of stderr to an unused descriptor number, closed again right away;
            // the table stays expanded.
            unsafe {
                libc::dup2(2, 100);
                libc::close(100);
            }
            let mut rest = args.to_vec();
            rest[0] = "open".into();
            run(&rest)
        }
        Some("getppid") => {
            let n = count(args.get(1))?;
            getppid(warmup(n));
            let t = Instant::now();
            getppid(n);
            Ok((t.elapsed().as_nanos() as f64 / n as f64, warmup(n)))
        }
        Some("tcp") => {
            let n = count(args.get(1))?;
            let (mut a, mut b) = tcp_pair()?;
            tcp_ping(&mut a, &mut b, warmup(n))?;
            let t = Instant::now();
            tcp_ping(&mut a, &mut b, n)?;
            Ok((t.elapsed().as_nanos() as f64 / n as f64, warmup(n)))
        }
        Some("uring") => {
            let n = count(args.get(1))?;
            let mut ring = io_uring::IoUring::new(8).map_err(|e| format!("io_uring_setup: {e}"))?;
            uring_nops(&mut ring, warmup(n))?;
            let t = Instant::now();
            uring_nops(&mut ring, n)?;
            Ok((t.elapsed().as_nanos() as f64 / n as f64, warmup(n)))
        }
        Some("tls") => {
            let port = args.get(1).and_then(|p| p.parse().ok()).ok_or("bad PORT")?;
            let (cert, key) = (
                args.get(2).ok_or("missing CERT")?,
                args.get(3).ok_or("missing KEY")?,
            );
            let n = count(args.get(4))?;
            let ssl: &'static Ssl = Box::leak(Box::new(Ssl::load()?));
            let client = tls_pair(ssl, port, cert, key)?;
            tls_lookups(ssl, client, warmup(n))?;
            let t = Instant::now();
            tls_lookups(ssl, client, n)?;
            Ok((t.elapsed().as_nanos() as f64 / n as f64, warmup(n)))
        }
        _ => Err(
            "usage: credwatch-bench-loop open PATH N | open-expanded PATH N | getppid N | \
                  tcp N | uring N | tls PORT CERT KEY N"
                .into(),
        ),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("open") {
        if let Some(code) = credwatch_e2e::continue_in_fresh_fd_table() {
            return ExitCode::from(code as u8);
        }
    }
    match run(&args) {
        Ok((ns, warmup)) => {
            let n = &args[args.len() - 1];
            println!(r#"{{"ns_per_op":{ns:.3},"timed":{n},"warmup":{warmup}}}"#);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("credwatch-bench-loop: {e}");
            ExitCode::FAILURE
        }
    }
}
