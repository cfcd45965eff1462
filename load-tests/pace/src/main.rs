//! pace: an open-loop HTTP/1.1 load generator for the half-rate latency runs
//! of load-tests/run.
//!
//! wrk is closed-loop: it can only slow down by pausing each connection for
//! whole milliseconds, so at a set rate its requests leave together on each
//! timer tick and the tail it reports is the generator's bursts as much as the
//! server. pace sends request i at `start + i / rate` (nanosecond epoll
//! timeouts, no timer slack) over keep-alive connections with one request in
//! flight each, and measures every latency from the moment the request was
//! due, not from when it could be sent: a server that stalls is charged for
//! every request that should have gone out meanwhile (no coordinated
//! omission).
//!
//! ```text
//! pace --addr 127.0.0.1:18080 --paths FILE --user-agents FILE --rate 30000 --duration 5 [--connections 64]
//! ```
//!
//! It prints the same `RESULT {json}` line as load-tests/hits.lua.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use rustix::event::{Timespec, epoll};

/// How long to wait for the answers still out when sending stops.
const DRAIN: Duration = Duration::from_secs(2);

struct Args {
    addr: SocketAddr,
    paths: Vec<String>,
    user_agents: Vec<String>,
    rate: f64,
    duration: Duration,
    connections: usize,
}

fn lines(path: &str) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let lines: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect();
    if lines.is_empty() {
        return Err(format!("{path} has no lines"));
    }
    Ok(lines)
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut addr, mut paths, mut user_agents, mut rate, mut duration, mut connections) =
        (None, None, None, None, None, 64);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |what: &str| -> Result<f64, String> {
            value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| format!("{flag} {value:?}: expected {what}"))
        };
        match flag.as_str() {
            "--addr" => {
                addr = Some(value.parse().map_err(|_| format!("--addr {value:?}: expected IP:PORT"))?)
            }
            "--paths" => paths = Some(lines(&value)?),
            "--user-agents" => user_agents = Some(lines(&value)?),
            "--rate" => rate = Some(number("requests per second above 0")?),
            "--duration" => duration = Some(Duration::from_secs_f64(number("seconds above 0")?)),
            "--connections" => connections = number("a connection count above 0")? as usize,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(Args {
        addr: addr.ok_or("--addr is required")?,
        paths: paths.ok_or("--paths is required")?,
        user_agents: user_agents.ok_or("--user-agents is required")?,
        rate: rate.ok_or("--rate is required")?,
        duration: duration.ok_or("--duration is required")?,
        connections,
    })
}

/// xorshift64*: enough to pick a path and a user agent without a crate.
struct Pick(u64);

impl Pick {
    fn index(&mut self, len: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as usize % len
    }
}

/// One keep-alive connection and the due time of the request it carries.
struct Conn {
    stream: TcpStream,
    read: Vec<u8>,
    due: Option<Instant>,
}

/// One complete response at the start of the read buffer.
#[derive(Debug, PartialEq)]
struct Response {
    len: usize,
    /// A success or a redirect.
    ok: bool,
    /// The server closes the connection after it (`Connection: close`).
    close: bool,
}

/// The response at the start of `buf`, or None while it is incomplete.
fn complete_response(buf: &[u8]) -> Option<Response> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let header = |wanted: &str| {
        head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim().eq_ignore_ascii_case(wanted).then(|| value.trim())
        })
    };
    let body = header("content-length").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
    (buf.len() >= head_end + body).then(|| Response {
        len: head_end + body,
        ok: matches!(head.get(9..10), Some("2" | "3")),
        close: header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")),
    })
}

fn connect(args: &Args, epoll: &impl rustix::fd::AsFd, index: usize) -> Result<Conn, String> {
    let stream =
        TcpStream::connect(args.addr).map_err(|e| format!("cannot connect to {}: {e}", args.addr))?;
    stream.set_nodelay(true).and_then(|()| stream.set_nonblocking(true)).map_err(|e| e.to_string())?;
    epoll::add(epoll, &stream, epoll::EventData::new_u64(index as u64), epoll::EventFlags::IN)
        .map_err(|e| format!("epoll: {e}"))?;
    Ok(Conn { stream, read: Vec::with_capacity(1024), due: None })
}

fn timespec(d: Duration) -> Timespec {
    Timespec { tv_sec: d.as_secs() as i64, tv_nsec: i64::from(d.subsec_nanos()) }
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] / 1000
}

fn run(args: &Args) -> Result<(), String> {
    // The default 50 µs slack would blur every wait by up to that much.
    rustix::thread::set_current_timer_slack(NonZeroU64::new(1)).map_err(|e| format!("timer slack: {e}"))?;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| format!("epoll: {e}"))?;
    let mut conns = (0..args.connections).map(|i| connect(args, &ep, i)).collect::<Result<Vec<_>, _>>()?;
    let mut idle: Vec<usize> = (0..conns.len()).rev().collect();
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    let mut pick = Pick(seed | 1);
    let host = args.addr.to_string();

    let start = Instant::now() + Duration::from_millis(20);
    let total = (args.rate * args.duration.as_secs_f64()) as u64;
    let due_at = |i: u64| start + Duration::from_nanos((i as f64 * 1e9 / args.rate) as u64);
    let (mut next, mut backlog) = (0u64, VecDeque::<Instant>::new());
    let mut latencies: Vec<u64> = Vec::with_capacity(total as usize);
    let mut errors = 0u64;
    let mut events = Vec::with_capacity(256);
    let mut chunk = [0u8; 16 * 1024];
    let give_up = due_at(total) + DRAIN;

    loop {
        let now = Instant::now();
        while next < total && due_at(next) <= now {
            backlog.push_back(due_at(next));
            next += 1;
        }
        while !backlog.is_empty() {
            let Some(c) = idle.pop() else { break };
            let due = backlog.pop_front().expect("not empty");
            let request = format!(
                "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {}\r\n\r\n",
                args.paths[pick.index(args.paths.len())],
                args.user_agents[pick.index(args.user_agents.len())]
            );
            // A request this small fits an idle socket's buffer whole.
            if conns[c].stream.write_all(request.as_bytes()).is_err() {
                errors += 1;
                conns[c] = connect(args, &ep, c)?;
                idle.push(c);
                continue;
            }
            conns[c].due = Some(due);
        }
        let in_flight = conns.len() - idle.len() + backlog.len();
        if next >= total && in_flight == 0 {
            break;
        }
        if now >= give_up {
            errors += in_flight as u64;
            break;
        }
        let timeout = if next < total && backlog.is_empty() {
            due_at(next).saturating_duration_since(now)
        } else {
            give_up.saturating_duration_since(now)
        };
        events.clear();
        epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), Some(&timespec(timeout)))
            .map_err(|e| format!("epoll: {e}"))?;
        for event in &events {
            let c = event.data.u64() as usize;
            let conn = &mut conns[c];
            let mut closed = false;
            loop {
                match conn.stream.read(&mut chunk) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => conn.read.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            if let Some(response) = complete_response(&conn.read) {
                conn.read.drain(..response.len);
                if let Some(due) = conn.due.take() {
                    latencies.push(Instant::now().duration_since(due).as_nanos() as u64);
                    errors += u64::from(!response.ok);
                    idle.push(c);
                }
                closed |= response.close;
            }
            if closed {
                if conn.due.take().is_some() {
                    errors += 1;
                    idle.push(c);
                }
                epoll::delete(&ep, &conn.stream).ok();
                conns[c] = connect(args, &ep, c)?;
            }
        }
    }

    latencies.sort_unstable();
    let seconds = args.duration.as_secs_f64();
    println!(
        "RESULT {{\"requests\":{},\"seconds\":{seconds:.3},\"rps\":{:.1},\"errors\":{errors},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}",
        latencies.len(),
        latencies.len() as f64 / seconds,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        latencies.last().map_or(0, |l| l / 1000),
    );
    Ok(())
}

fn main() {
    if let Err(e) = parse_args(std::env::args().skip(1)).and_then(|args| run(&args)) {
        eprintln!("pace: {e}");
        std::process::exit(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_is_complete_only_with_its_whole_body() {
        let gif = b"HTTP/1.1 200 OK\r\ncontent-type: image/gif\r\nContent-Length: 3\r\n\r\nGIF";
        assert_eq!(complete_response(gif), Some(Response { len: gif.len(), ok: true, close: false }));
        assert_eq!(complete_response(&gif[..gif.len() - 1]), None);
        let redirect = b"HTTP/1.1 302 Found\r\nlocation: /\r\n\r\n";
        assert_eq!(
            complete_response(redirect),
            Some(Response { len: redirect.len(), ok: true, close: false })
        );
        let last = b"HTTP/1.1 404 Not Found\r\nConnection: close\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(complete_response(last), Some(Response { len: last.len(), ok: false, close: true }));
        assert_eq!(complete_response(b"HTTP/1.1 200 OK\r\n"), None);
    }

    #[test]
    fn percentiles_are_ranks_in_microseconds() {
        let sorted: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        assert_eq!(percentile(&sorted, 0.5), 500);
        assert_eq!(percentile(&sorted, 0.99), 990);
        assert_eq!(percentile(&sorted, 0.999), 999);
        assert_eq!(percentile(&[], 0.99), 0);
    }

    #[test]
    fn bad_flags_are_named() {
        let parse = |s: &str| parse_args(s.split_whitespace().map(str::to_owned)).err().unwrap_or_default();
        assert!(parse("--rate -1").contains("--rate \"-1\": expected requests per second above 0"));
        assert!(parse("--addr localhost").contains("expected IP:PORT"));
        assert!(parse("--bogus 1").contains("unknown flag --bogus"));
        assert!(parse("--rate 10").contains("--addr is required"));
    }
}
