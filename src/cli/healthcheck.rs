//! `waymark healthcheck`: exit 0 if the service answers 200 on its health
//! endpoint; a container probe that needs no shell and no curl.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::time::Duration;

use anyhow::{Context as _, bail};

pub fn run(url: &str) -> anyhow::Result<()> {
    let parsed = url::Url::parse(url).with_context(|| format!("--url {url:?} is not a URL"))?;
    if parsed.scheme() != "http" {
        bail!("--url {url:?} has scheme {:?}: expected http", parsed.scheme());
    }
    let host = parsed.host_str().context("--url has no host")?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    let addr = (host, port).to_socket_addrs()?.next().with_context(|| format!("{host} does not resolve"))?;
    let timeout = Duration::from_secs(3);
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n", parsed.path())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).context("no HTTP answer")?;
    match &head[9..12] {
        b"200" => Ok(()),
        status => bail!("{url} answered {}", String::from_utf8_lossy(status)),
    }
}
