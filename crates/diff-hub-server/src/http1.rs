//! A small HTTP/1.1 server on `std::net`: one thread per connection, keep-alive, bodies by
//! `Content-Length` or chunked, `Expect: 100-continue`.
//!
//! Why not a crate: `tiny_http` 0.12 (tried first) runs connections on a thread pool that can
//! lose a wake-up when connections arrive in a burst, and it refuses a `Connection: close`
//! header, so a burst of parallel uploads from Python could hang for minutes (seen in
//! `cargo xtask e2e`). A thread per connection has no such failure mode, and cutting a body
//! mid-file (fault injection) really closes the socket, as a killed server does.

use crate::handlers::{Body, Reply};
use crate::{Origin, Shared};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Largest request head (request line plus headers).
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body kept in memory (uploads of this test server are small).
const MAX_BODY: u64 = 1 << 30;
/// An idle keep-alive connection is closed after this long.
const IDLE: Duration = Duration::from_secs(30);

/// A parsed request head plus its body.
pub(crate) struct Incoming {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub keep_alive: bool,
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn read_line(reader: &mut impl BufRead, budget: &mut usize) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = reader
        .take(*budget as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if n > *budget {
        return Err(std::io::Error::other("request head too large"));
    }
    *budget -= n;
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

/// Reads one request; `Ok(None)` when the client closed the connection between requests.
fn read_request(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
) -> std::io::Result<Option<Incoming>> {
    let mut budget = MAX_HEAD;
    let mut first = match read_line(reader, &mut budget)? {
        Some(line) => line,
        None => return Ok(None),
    };
    // Tolerate stray empty lines between requests.
    while first.is_empty() {
        first = match read_line(reader, &mut budget)? {
            Some(line) => line,
            None => return Ok(None),
        };
    }
    let mut parts = first.split_whitespace();
    let (Some(method), Some(url), version) = (parts.next(), parts.next(), parts.next()) else {
        return Err(std::io::Error::other("bad request line"));
    };
    let http10 = version == Some("HTTP/1.0");
    let mut headers = Vec::new();
    loop {
        let line =
            read_line(reader, &mut budget)?.ok_or_else(|| std::io::Error::other("EOF in head"))?;
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    if header(&headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let chunked = header(&headers, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        read_chunked(reader)?
    } else {
        let len: u64 = match header(&headers, "content-length") {
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| std::io::Error::other("bad Content-Length"))?,
            None => 0,
        };
        if len > MAX_BODY {
            return Err(std::io::Error::other("body too large"));
        }
        let mut body = Vec::new();
        reader.take(len).read_to_end(&mut body)?;
        if body.len() as u64 != len {
            return Err(std::io::Error::other("EOF in body"));
        }
        body
    };
    let connection = header(&headers, "connection").map(str::to_ascii_lowercase);
    let keep_alive = match connection.as_deref() {
        Some(c) if c.contains("close") => false,
        Some(c) if c.contains("keep-alive") => true,
        _ => !http10,
    };
    Ok(Some(Incoming {
        method: method.to_ascii_uppercase(),
        url: url.to_string(),
        headers,
        body,
        keep_alive,
    }))
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut budget = 1024;
        let line = read_line(reader, &mut budget)?
            .ok_or_else(|| std::io::Error::other("EOF in chunk size"))?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            let mut budget = MAX_HEAD;
            while read_line(reader, &mut budget)?.is_some_and(|l| !l.is_empty()) {}
            return Ok(body);
        }
        if body.len() as u64 + size > MAX_BODY {
            return Err(std::io::Error::other("body too large"));
        }
        let before = body.len();
        reader.take(size).read_to_end(&mut body)?;
        if (body.len() - before) as u64 != size {
            return Err(std::io::Error::other("EOF in chunk"));
        }
        let mut budget = 16;
        read_line(reader, &mut budget)?;
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        412 => "Precondition Failed",
        416 => "Range Not Satisfiable",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Writes a reply; an error means the connection must be dropped (a cut body included).
fn write_reply(
    stream: &mut TcpStream,
    head_only: bool,
    reply: Reply,
    keep_alive: bool,
) -> std::io::Result<()> {
    let length = match &reply.body {
        Body::Bytes(b) => b.len() as u64,
        Body::File { len, .. } => *len,
    };
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    for (k, v) in &reply.headers {
        if !k.eq_ignore_ascii_case("content-length") && !k.eq_ignore_ascii_case("connection") {
            head.push_str(&format!("{k}: {}\r\n", v.replace(['\r', '\n'], " ")));
        }
    }
    head.push_str(&format!(
        "Content-Length: {length}\r\nConnection: {}\r\n\r\n",
        if keep_alive { "keep-alive" } else { "close" }
    ));
    stream.write_all(head.as_bytes())?;
    if head_only {
        return stream.flush();
    }
    match reply.body {
        Body::Bytes(bytes) => stream.write_all(&bytes)?,
        Body::File {
            mut file,
            len,
            truncate,
            exit,
            corrupt,
        } => {
            let mut left = len;
            let mut allowed = truncate.unwrap_or(u64::MAX);
            let mut first = corrupt;
            let mut buf = vec![0u8; 64 * 1024];
            while left > 0 {
                if allowed == 0 {
                    stream.flush()?;
                    if exit {
                        eprintln!(
                            "diff-hub-server: exiting mid-file, as configured (--exit-after-bytes)"
                        );
                        std::process::exit(3);
                    }
                    return Err(std::io::Error::other("body cut by fault injection"));
                }
                let want = buf
                    .len()
                    .min(usize::try_from(left.min(allowed)).unwrap_or(usize::MAX));
                let Some(chunk) = buf.get_mut(..want) else {
                    break;
                };
                let n = file.read(chunk)?;
                if n == 0 {
                    return Err(std::io::Error::other("file shorter than announced"));
                }
                if first {
                    if let Some(b) = chunk.first_mut() {
                        *b ^= 0xff;
                    }
                    first = false;
                }
                stream.write_all(chunk.get(..n).unwrap_or_default())?;
                left -= n as u64;
                allowed -= n as u64;
            }
        }
    }
    stream.flush()
}

fn serve_connection(shared: Arc<Shared>, origin: Origin, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IDLE));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    loop {
        let incoming = match read_request(&mut reader, &mut writer) {
            Ok(Some(incoming)) => incoming,
            Ok(None) => break,
            Err(e) => {
                let reply = crate::handlers::error(400, None, &format!("bad request: {e}"));
                let _ = write_reply(&mut writer, false, reply, false);
                break;
            }
        };
        let keep_alive = incoming.keep_alive;
        let head_only = incoming.method == "HEAD";
        let reply = crate::handlers::handle(&shared, origin, incoming);
        if write_reply(&mut writer, head_only, reply, keep_alive).is_err() || !keep_alive {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

/// Accepts connections until `stop` is set (polling, so stopping needs no wake-up trick).
pub(crate) fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    origin: Origin,
    stop: Arc<AtomicBool>,
) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(false).is_err() {
                    continue;
                }
                let shared = shared.clone();
                std::thread::spawn(move || serve_connection(shared, origin, stream));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}
